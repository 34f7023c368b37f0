"""The web view's access file: where a daemon's view answers, and the token it wants.

The daemon writes it beside its socket with mode 0600 once its view serves, and removes
it when it stops; ``orch web`` reads it and prints the URL with the token, as Jupyter
does. This module imports nothing of the web server: the CLI loads it.
"""

from __future__ import annotations

import html
import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .. import paths
from ..errors import Unavailable

HOW_TO_START = "start one with orch daemon --http 127.0.0.1:8787"


def write(path: Path, url: str, token: str) -> None:
    """Create the file (0600 from the start, whatever the umask) holding ``url`` and
    ``token``. One left by a daemon that died is replaced: the caller holds the
    socket's lock, so no live daemon owns it."""
    paths.ensure_private_dir(path.parent)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, paths.FILE_MODE)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url, "token": token, "pid": os.getpid()}, f)


def opener_file(path: Path) -> Path:
    """The page ``orch web --open`` hands the browser: the token stays out of the
    browser's command line, which every user of the machine can read."""
    return path.with_name(path.name + ".html")


def remove(path: Path) -> None:
    for p in (path, opener_file(path)):
        p.unlink(missing_ok=True)


def read(sock: Path) -> dict[str, Any]:
    """The access file of the daemon on ``sock``, once its view answers; else
    ``Unavailable`` saying why."""
    path = paths.web_access_file(sock)
    try:
        data = json.loads(path.read_text())
        url, token = data["url"], data["token"]
    except FileNotFoundError:
        raise Unavailable(f"no daemon serves a web view for socket {sock}: "
                          f"{HOW_TO_START}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise Unavailable(f"cannot read the web view's access file {path}: {exc}") from None
    if not _answers(url):
        raise Unavailable(f"the web view at {url} does not answer (its daemon is gone?): "
                          f"{HOW_TO_START}")
    return {"url": url, "token": token}


def login_url(data: dict[str, Any]) -> str:
    """The URL that logs a browser in: the view swaps the token for a cookie at once."""
    return f"{data['url']}?token={data['token']}"


def write_opener(sock: Path, url: str) -> Path:
    """A 0600 page that sends the browser on to ``url``."""
    path = opener_file(paths.web_access_file(sock))
    path.unlink(missing_ok=True)
    url = html.escape(url, quote=True)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, paths.FILE_MODE)
    with os.fdopen(fd, "w") as f:
        f.write(f'<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" '
                f'content="0;url={url}"><title>orch</title><a href="{url}">orch</a>\n')
    return path


def _answers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=2):
            return True
    except OSError:
        return False
