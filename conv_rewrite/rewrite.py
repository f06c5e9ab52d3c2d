"""The FX transform: normalize -> decide -> plan the output layout -> replace -> report, for every conv node."""

from __future__ import annotations

from typing import Any

import torch
import torch.fx

from ._torch_private import fake_mode_of
from .conv_call import ConvCall, conv_call, recorded_value, tensor_info
from .decide import Decision, decide
from .layout import contiguous_strides, free_strides, layout_is_observed, same_layout
from .options import Options, make_options
from .record import record
from .replace import AS_CONV, CONTIGUOUS, FREE, replace_conv
from .report import Report, ReportRow


def plan_layout(gm: torch.fx.GraphModule, node: torch.fx.Node, call: ConvCall) -> tuple[str | None, str]:
    """The output layout the replacement must produce, or (None, reason) when none reproduces the conv's."""
    info = tensor_info(node)
    if call.level == "aten":
        ops = call.operands
        traced_on = [node, ops.x, ops.weight] + ([ops.bias] if ops.has_bias else [])
        if not all(isinstance(recorded_value(n), torch.Tensor) for n in traced_on):
            return None, "no meta['val'] on the ATen node or its operands: the replacement cannot be traced"
    if info is None:
        return (CONTIGUOUS if call.transposed else AS_CONV), ""
    shape, stride, dtype = info
    free = contiguous_strides(shape) if call.transposed else free_strides(shape, call.dims)
    natural = CONTIGUOUS if call.transposed else FREE
    if same_layout(shape, stride, free):
        return natural, ""
    recorded = recorded_value(node)
    device = recorded.device if isinstance(recorded, torch.Tensor) else None
    with fake_mode_of(recorded if isinstance(recorded, torch.Tensor) else None):
        free_value = torch.empty_strided(shape, free, dtype=dtype, device=device)
    if not layout_is_observed(gm, node, free_value):
        return natural, ""
    if not call.transposed and same_layout(shape, stride, contiguous_strides(shape)):
        return CONTIGUOUS, ""
    wanted = "not contiguous" if call.transposed else "neither contiguous nor channels-last"
    return None, f"the conv's output strides {tuple(stride)} are observed and are {wanted}"


def plan(
    gm: torch.fx.GraphModule, node: torch.fx.Node, call: ConvCall, options: Options
) -> tuple[Decision, str | None]:
    """The decision for one conv and, when it is rewritten, the output layout its replacement must produce."""
    decision = decide(call, options)
    if not decision.rewrite:
        return decision, None
    layout, problem = plan_layout(gm, node, call)
    return (decision, layout) if layout is not None else (Decision(False, problem), None)


def rewrite(
    gm: torch.fx.GraphModule, options: Options | dict[str, Any] | None = None, *, where: str = "rewrite", **kwargs: Any
) -> Report:
    """Rewrite every patchify conv of ``gm`` in place into reshape + permute + one GEMM, and recompile it.

    Returns the Report: one row per conv node, rewritten or skipped with the reason. Options (see ``Options``)
    come as an Options object, a dict, or keywords; ``where`` labels the rows and the log line.
    """
    if not isinstance(gm, torch.fx.GraphModule):
        raise TypeError(f"rewrite() expects a torch.fx.GraphModule, got {type(gm).__module__}.{type(gm).__qualname__}")
    opts = make_options(options, **kwargs)
    report = Report()
    for node in list(gm.graph.nodes):
        call = conv_call(node, gm)
        if call is None:
            continue
        decision, layout = plan(gm, node, call, opts)
        if decision.rewrite:
            replace_conv(gm, node, call, layout)
        report.rows.append(ReportRow.of(call, decision, layout, where))
    if report.rewritten:
        gm.graph.lint()
        gm.recompile()
    record(report, where)
    return report
