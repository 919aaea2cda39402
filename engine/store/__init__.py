"""Herald's own state: the SQLite store and the read models over it."""

from .core import MIGRATIONS, OutboxRow, Store

__all__ = ["MIGRATIONS", "OutboxRow", "Store"]
