"""What ``orch doctor`` can see of a running daemon from outside it (Linux /proc).

Two things keep a daemon and every other SQLite program on one WAL: the daemon holds
SQLite's POSIX locks on the database file (a program that finds the file unlocked
believes it is the last user, checkpoints and deletes the WAL), and the WAL and
shared-memory files it has open are the ones on disk. Both can be read without
touching the files' locks: /proc/locks lists every process's locks, /proc/PID/fd its
open files.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def daemon_lock_path(db: Path) -> Path:
    """The file the daemon serving ``db`` holds an exclusive flock on, its pid inside."""
    return db.with_name(db.name + ".daemon.lock")


def problems(db: Path) -> list[str]:
    """What is wrong with the daemon serving ``db`` (empty when none runs, or all is well)."""
    if not (PROC / "locks").is_file():
        return []  # not Linux: nothing to look at
    db = Path(db).resolve()
    pid = serving_daemon(db)
    if pid is None:
        return []
    found: list[str] = []
    st = os.stat(db)
    if not any(lock_pid == pid and kind == "POSIX" and ident == _ident(st)
               for kind, lock_pid, ident in _locks()):
        found.append(f"the daemon (pid {pid}) holds no lock on {db}: another SQLite program "
                     "that opens the file may delete the WAL under it; restart the daemon")
    for suffix in ("-wal", "-shm", ""):
        path = Path(f"{db}{suffix}")
        for fd_path in _open_as(pid, path):
            try:
                opened, on_disk = os.stat(fd_path), os.stat(path)
            except FileNotFoundError:
                on_disk = None
            if on_disk is None or _ident(opened) != _ident(on_disk):
                found.append(f"the daemon (pid {pid}) has {path.name} open, but that file "
                             "is no longer the one on disk (another program removed it); "
                             "writes now go to two places: stop everything, restart the "
                             "daemon, then run orch doctor again")
                break
    return found


def serving_daemon(db: Path) -> int | None:
    """The pid in the daemon lock file, if a process holds that file's flock now."""
    lock = daemon_lock_path(db)
    try:
        st = os.stat(lock)
        text = lock.read_text().strip()  # a file of its own: no SQLite lock lives on it
    except (FileNotFoundError, PermissionError):
        return None
    if not text.isdigit():
        return None
    pid = int(text)
    held = any(lock_pid == pid and kind == "FLOCK" and ident == _ident(st)
               for kind, lock_pid, ident in _locks())
    return pid if held else None


def _ident(st: os.stat_result) -> str:
    # /proc/locks names a file as MAJOR:MINOR:INODE, the first two in hex.
    return f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"


def _locks() -> list[tuple[str, int, str]]:
    """(kind, pid, file) of every lock held on the machine; waiters ("->") left out."""
    out = []
    for line in (PROC / "locks").read_text().splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] == "->":
            continue
        try:
            out.append((fields[1], int(fields[4]), fields[5]))
        except ValueError:
            continue
    return out


def _open_as(pid: int, path: Path) -> list[Path]:
    """The /proc entries of ``pid``'s descriptors opened on ``path`` (deleted or not)."""
    fd_dir = PROC / str(pid) / "fd"
    want = {str(path), f"{path} (deleted)"}
    found = []
    try:
        entries = list(fd_dir.iterdir())
    except (FileNotFoundError, PermissionError):
        return []
    for entry in entries:
        try:
            if os.readlink(entry) in want:
                found.append(entry)
        except OSError:
            continue
    return found

