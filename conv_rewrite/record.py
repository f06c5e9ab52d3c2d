"""Record: where every entry point leaves its per-graph reports, so users can read them after compiling."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from .report import Report

log = logging.getLogger("conv_rewrite")

_last: list[Report] = [Report()]
_open: list[Report] = []


def record(report: Report, where: str) -> None:
    """Keep ``report`` as the last one, add it to every open ``collect_reports()``, and log one line."""
    _last[0] = report
    for sink in _open:
        sink.extend(report)
    if report.rows:
        log.info("%s: %s", where, report.summary())


def last_report() -> Report:
    """The report of the most recent graph any entry point rewrote (or inspected and left alone)."""
    return _last[0]


@contextlib.contextmanager
def collect_reports() -> Iterator[Report]:
    """Collect the rows of every graph rewritten inside the block (all graphs of a compile, forward and backward)."""
    sink = Report()
    _open.append(sink)
    try:
        yield sink
    finally:
        _open.remove(sink)
