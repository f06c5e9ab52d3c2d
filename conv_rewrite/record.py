"""Record: where every entry point leaves its per-graph reports, per caller (a contextvar), so users can read them.

A compile in another thread or task neither sees nor fills the reports of this one.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator

from .report import Report

log = logging.getLogger("conv_rewrite")

_last: contextvars.ContextVar[Report | None] = contextvars.ContextVar("conv_rewrite_last_report", default=None)
_open: contextvars.ContextVar[tuple[Report, ...]] = contextvars.ContextVar("conv_rewrite_open_reports", default=())


def record(report: Report, where: str) -> None:
    """Keep ``report`` as this caller's last one, add it to every open ``collect_reports()``, and log one line."""
    _last.set(report)
    for sink in _open.get():
        sink.extend(report)
    if report.rows:
        log.info("%s: %s", where, report.summary())


def last_report() -> Report:
    """The report of the most recent graph (or ``convert_``) this thread or task rewrote or inspected."""
    return _last.get() or Report()


@contextlib.contextmanager
def collect_reports() -> Iterator[Report]:
    """Collect the rows of every graph rewritten inside the block, in this thread or task (forward and backward)."""
    sink = Report()
    token = _open.set(_open.get() + (sink,))
    try:
        yield sink
    finally:
        _open.reset(token)
