"""Report: one row per conv found, what it is and what was decided, as a table or as plain data."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from tabulate import tabulate

from .decide import Decision
from .normalize import ConvCall

REWRITTEN, SKIPPED = "rewritten", "skipped"


def _gemm(call: ConvCall) -> tuple[Any, Any, Any] | None:
    """(M, K, N) of the GEMM a rewritten conv becomes; M is None when the input's size is not static.

    K = C * prod(kernel) comes from the weight, so it is known even where the input's shape is not (but not for a lazy
    module before its first call).
    """
    if call.kernel is None:
        return None
    shape = call.input_shape
    padding = (0,) * len(call.kernel) if isinstance(call.padding, str) or call.transposed else call.padding
    m = None
    if shape is not None and all(isinstance(s, int) for s in shape):
        batch = shape[0] if len(shape) == len(call.kernel) + 2 else 1
        spatial = shape[-len(call.kernel) :]
        if call.transposed:
            m = batch * math.prod(spatial)
        else:
            m = batch * math.prod((s + 2 * p) // k for s, p, k in zip(spatial, padding, call.kernel))
    # a lazy conv module (nn.LazyConv2d) has in_channels 0 until its first call: K is not known before
    channels = call.in_channels if isinstance(call.in_channels, int) and call.in_channels > 0 else None
    if call.transposed:
        n = call.out_channels * math.prod(call.kernel) if isinstance(call.out_channels, int) else None
        return (m, channels, n)
    return (m, channels * math.prod(call.kernel) if channels is not None else None, call.out_channels)


@dataclass(frozen=True)
class ReportRow:
    """What one conv is and what happened to it."""

    node: str
    module: str | None
    op: str
    dims: int | None
    input_shape: tuple[Any, ...] | None
    dtype: str | None
    kernel: tuple[int, ...] | None
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]
    groups: int
    transposed: bool
    decision: str
    reason: str
    output_layout: str | None = None
    gemm: tuple[Any, Any, Any] | None = None
    graph: str | None = None

    @classmethod
    def of(cls, call: ConvCall, decision: Decision, layout: str | None, graph: str | None = None) -> ReportRow:
        return cls(
            node=call.node,
            module=call.module,
            op=call.op,
            dims=call.dims,
            input_shape=call.input_shape,
            dtype=call.dtype,
            kernel=call.kernel,
            stride=call.stride,
            padding=call.padding,
            dilation=call.dilation,
            groups=call.groups,
            transposed=call.transposed,
            decision=REWRITTEN if decision.rewrite else SKIPPED,
            reason=decision.reason,
            output_layout=layout if decision.rewrite else None,
            gemm=_gemm(call) if decision.rewrite else None,
            graph=graph,
        )

    @property
    def rewritten(self) -> bool:
        return self.decision == REWRITTEN

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReportRow:
        """The row ``to_dict`` (or its JSON) describes."""
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple):
        return "(" + ", ".join("?" if v is None else str(v) for v in value) + ")"
    return str(value)


class Report:
    """The rows of every conv that a rewrite (or several graphs of one compile) saw."""

    columns = (
        "module",
        "op",
        "input_shape",
        "kernel",
        "stride",
        "padding",
        "dilation",
        "groups",
        "decision",
        "reason",
        "output_layout",
        "gemm",
    )
    headers = (
        "module / node",
        "op",
        "input",
        "kernel",
        "stride",
        "padding",
        "dilation",
        "groups",
        "decision",
        "reason",
        "output",
        "GEMM (M, K, N)",
    )

    def __init__(self, rows: list[ReportRow] | None = None):
        self.rows: list[ReportRow] = list(rows or [])

    def __iter__(self) -> Iterator[ReportRow]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> ReportRow:
        return self.rows[index]

    def extend(self, other: Report) -> None:
        self.rows.extend(other.rows)

    @property
    def rewritten(self) -> list[ReportRow]:
        return [r for r in self.rows if r.rewritten]

    @property
    def skipped(self) -> list[ReportRow]:
        return [r for r in self.rows if not r.rewritten]

    def summary(self) -> str:
        """One line: how many convs were rewritten and skipped."""
        return f"{len(self.rewritten)} of {len(self.rows)} conv(s) rewritten, {len(self.skipped)} skipped"

    def to_dicts(self) -> list[dict[str, Any]]:
        return [row.to_dict() for row in self.rows]

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dicts(), **kwargs)

    def table(self, tablefmt: str = "simple") -> str:
        body = [[row.module or row.node] + [_cell(getattr(row, c)) for c in self.columns[1:]] for row in self.rows]
        return tabulate(body, headers=self.headers, tablefmt=tablefmt)

    def __str__(self) -> str:
        return self.table() if self.rows else "no convolutions found"

    def __repr__(self) -> str:
        return f"<conv_rewrite.Report: {self.summary()}>"
