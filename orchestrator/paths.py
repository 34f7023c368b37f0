"""Where orch keeps its files, and the permissions they get."""

from __future__ import annotations

import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def home() -> Path:
    return Path(os.environ.get("OPENCLAW_HOME") or Path.home() / ".openclaw").expanduser()


#: A database: a SQLite file's path, or a ``postgresql://`` URL (kept as text: a Path
#: would fold its ``//``).
Database = Path | str


def db_arg(value: str | Path) -> Database:
    """``--db`` or ORCH_DB as orch uses it: a URL as given, anything else a path."""
    text = str(value)
    if text.startswith(("postgresql://", "postgres://")):
        return text
    return Path(text).expanduser()


def default_db() -> Database:
    env = os.environ.get("ORCH_DB")
    return db_arg(env) if env else home() / "data" / "orchestrator.db"


def shown(db: Database) -> str:
    """The database as orch prints it: a URL's password masked, a path resolved."""
    if isinstance(db, str):
        from .postgres import masked

        return masked(db)
    return str(db.resolve())


def default_socket() -> Path:
    env = os.environ.get("ORCH_SOCKET")
    return Path(env).expanduser() if env else home() / "run" / "orch.sock"


def default_log_file() -> Path:
    return home() / "logs" / "orchestrator.log"


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) with mode 0700.

    Only directories orch creates are chmod-ed; an existing directory such as /tmp is
    left as its owner set it.
    """
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(d, DIR_MODE)


def make_private(path: Path) -> None:
    """Give an existing file of ours mode 0600, by path.

    Never by opening it: closing any descriptor of a file drops every POSIX lock this
    process holds on it, and SQLite's locks on the database are exactly those. Another
    SQLite program that then finds the file unlocked believes it is the last user,
    checkpoints and deletes the WAL still open here.
    """
    st = os.stat(path)
    if st.st_mode & 0o777 != FILE_MODE and st.st_uid == os.getuid():
        os.chmod(path, FILE_MODE)  # a file made by hand or by another tool


def create_private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600; it must not exist yet.

    Only for a file no connection can have open (a new database under a temporary
    name, a backup's destination): SQLite gives -wal and -shm the database's mode, so
    creating it 0600 first keeps all three private whatever the umask.
    """
    ensure_private_dir(path.parent)
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE))
