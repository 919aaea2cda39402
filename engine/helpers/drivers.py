"""Database drivers: which one Herald uses per database, and which extra installs it.

The drivers are not dependencies of herald-bsg itself but extras — `herald-bsg[mysql]`
(PyMySQL) and `herald-bsg[postgresql]` (psycopg) — so a `sql` source or a `directory:`
pointing at a database whose driver is missing must say which extra to install, at
config time, instead of failing later with SQLAlchemy's bare ModuleNotFoundError.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.exc import NoSuchModuleError

DISTRIBUTION = "herald-bsg"

DRIVERS = {"mysql": "pymysql", "mariadb": "pymysql", "postgresql": "psycopg", "sqlite": "pysqlite"}
"""Backend → the driver Herald installs and uses for it (`mysql://` means `mysql+pymysql://`)."""

EXTRAS = {"mysql": "mysql", "mariadb": "mysql", "postgresql": "postgresql"}
"""Backend → the extra of herald-bsg that installs its driver (SQLite needs none)."""


def install_command(backend: str) -> str | None:
    """`pip install 'herald-bsg[mysql]'` for a backend with an extra, else None."""
    extra = EXTRAS.get(backend)
    return f"pip install '{DISTRIBUTION}[{extra}]'" if extra else None


def missing_driver(url: sa.URL) -> tuple[str, str] | None:
    """(problem, what to do) when the URL's driver cannot be loaded, else None.

    Covers a driver SQLAlchemy does not know (`mysql+nosuchdriver://`) and one it knows
    whose module is not installed (`mysql+pymysql://` without PyMySQL). Never quotes the
    URL: it may hold a password."""
    backend = url.get_backend_name()
    driver = url.get_driver_name()
    ours = DRIVERS.get(backend)
    install = install_command(backend)
    use = f"{backend}+{ours}://" if ours else None
    try:
        dialect = url.get_dialect()
    except NoSuchModuleError:
        problem = f'the driver "{driver}" for {backend} is not available'
        todo = [f"use {use}" if use else None,
                f"Herald's driver for it comes with {install}" if install else None]
        return problem, "; ".join(t for t in todo if t) or "check the URL's scheme"
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        module = getattr(exc, "name", None) or driver
        problem = f'the driver "{driver}" for {backend} is not installed (no module {module})'
        if install and driver == ours:
            return problem, f"install it: {install}"
        if install:
            return problem, f"install Herald's driver with {install} and use {use}"
        return problem, f"install the Python package that provides {module}"
    return None
