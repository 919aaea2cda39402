"""Herald's own state: the SQLite store and the read models over it."""

from .core import MIGRATIONS, OutboxRow, Store
from .states import FINAL_STATES, MessageState

__all__ = ["FINAL_STATES", "MIGRATIONS", "MessageState", "OutboxRow", "Store"]
