"""The FX transform: normalize -> decide -> plan the output layout -> replace -> report, for every conv node."""

from __future__ import annotations

from typing import Any

import torch.fx

from .decide import Decision, decide
from .layout import plan_layout
from .normalize import ConvCall, conv_call, graph_attr
from .options import Options, make_options
from .record import record
from .replace import replace_conv
from .report import Report, ReportRow


def plan(
    gm: torch.fx.GraphModule, node: torch.fx.Node, call: ConvCall, options: Options
) -> tuple[Decision, str | None]:
    """The decision for one conv and, when it is rewritten, the output layout its replacement must produce."""
    decision = decide(call, options)
    if not decision.rewrite:
        return decision, None
    layout, problem = plan_layout(gm, node, call)
    return (decision, layout) if layout is not None else (Decision(False, problem), None)


def rewrite_graph(gm: torch.fx.GraphModule, options: Options, where: str, _done: set[int] | None = None) -> Report:
    """The pipeline over every conv node of ``gm`` and of the subgraphs its higher-order ops call (checkpoint, cond,
    nested regions), in place and in graph order; returns the report without recording it."""
    done = set() if _done is None else _done
    done.add(id(gm))
    report = Report()
    for node in list(gm.graph.nodes):
        sub = graph_attr(gm, str(node.target)) if node.op == "get_attr" else None
        if isinstance(sub, torch.fx.GraphModule) and id(sub) not in done:
            report.extend(rewrite_graph(sub, options, f"{where} / {node.target}", done))
            continue
        call = conv_call(node, gm)
        if call is None:
            continue
        decision, layout = plan(gm, node, call, options)
        if decision.rewrite:
            assert layout is not None, "plan gives a layout with every rewrite"
            replace_conv(gm, node, call, layout)
        report.rows.append(ReportRow.of(call, decision, layout, where))
    if report.rewritten:
        gm.graph.lint()
        gm.recompile()
    return report


def rewrite(
    gm: torch.fx.GraphModule, options: Options | dict[str, Any] | None = None, *, where: str = "rewrite", **kwargs: Any
) -> Report:
    """Rewrite every patchify conv of ``gm`` in place into reshape + permute + one GEMM, and recompile it.

    Returns the Report: one row per conv node, rewritten or skipped with the reason. Options (see ``Options``)
    come as an Options object, a dict, or keywords; ``where`` labels the rows and the log line.
    """
    if not isinstance(gm, torch.fx.GraphModule):
        raise TypeError(f"rewrite() expects a torch.fx.GraphModule, got {type(gm).__module__}.{type(gm).__qualname__}")
    if not isinstance(where, str):
        raise TypeError(f"where must be a str, got {type(where).__name__}")
    report = rewrite_graph(gm, make_options(options, **kwargs), where)
    record(report, where)
    return report
