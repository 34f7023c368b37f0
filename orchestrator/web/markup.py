"""HTML from templates that escape every value they are given.

``h(template, *values)`` is ``str.format`` with each value passed through
``html.escape`` (quotes included, so a value is safe in a double-quoted attribute too),
unless it is ``HTML`` already: markup built here. Templates are literals in ``pages``;
nothing read from the database is ever a template or counted as markup.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any


class HTML(str):
    """Markup that is safe as it is: never escaped again."""

    __slots__ = ()


def esc(value: Any) -> HTML:
    if isinstance(value, HTML):
        return value
    return HTML("" if value is None else html.escape(str(value), quote=True))


def _value(v: Any) -> Any:
    # Numbers are passed as they are, so a template may format them ({:,}); they hold
    # no markup.
    return v if isinstance(v, int | float) else esc(v)


def h(template: str, *args: Any, **kwargs: Any) -> HTML:
    return HTML(template.format(*(_value(a) for a in args),
                                **{k: _value(v) for k, v in kwargs.items()}))


def join(parts: Iterable[Any], sep: str = "") -> HTML:
    return HTML(sep.join(esc(p) for p in parts))
