"""The ATen-level pass, on Inductor's pattern matcher: ``aten.convolution.default`` -> the patchify GEMM.

For graphs that reach Inductor only at ATen level (torch.export, AOTInductor): pattern, check and replacement
side by side, with the same decision and report as the torch-level pass.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.fx
from torch._inductor.custom_graph_pass import CustomGraphPass
from torch._inductor.pattern_matcher import CallFunction, KeywordArg, Match, PatternMatcherPass, register_graph_pattern

from .conv_call import conv_call
from .inductor_pass import code_hash
from .options import Options
from .record import record
from .replace import replacement
from .report import Report, ReportRow
from .rewrite import plan

aten = torch.ops.aten
_ARGUMENTS = ("input", "weight", "bias", "stride", "padding", "dilation", "transposed", "output_padding", "groups")
CONVOLUTION = CallFunction(aten.convolution.default, *(KeywordArg(name) for name in _ARGUMENTS))
_graph_ids = itertools.count()


class AtenConvRewritePass(CustomGraphPass):
    """Inductor ``post_grad_custom_pre_pass`` (or any ATen graph): rewrites matching ``aten.convolution`` nodes."""

    def __init__(self, options: Options | None = None):
        self.options = options or Options()

    def uuid(self) -> str:
        return code_hash(self.options)

    def __call__(self, graph: torch.fx.Graph) -> None:
        self.apply(graph.owning_module, where=f"inductor post-grad graph {next(_graph_ids)}")

    def apply(self, gm: torch.fx.GraphModule, where: str = "aten pass") -> Report:
        """Run the pattern over ``gm``'s graph; returns (and records) the report."""
        report = Report()
        replacements: dict[torch.fx.Node, Any] = {}

        def check(match: Match) -> bool:
            node = match.output_node()
            call = conv_call(node, gm)
            decision, layout = plan(gm, node, call, self.options)
            report.rows.append(ReportRow.of(call, decision, layout, where))
            if decision.rewrite:
                replacements[node] = replacement(call, layout)
            return decision.rewrite

        def replace(match: Match, input: Any, weight: Any, bias: Any, **_: Any) -> None:  # noqa: A002
            fn = replacements[match.output_node()]
            if bias is None:
                match.replace_by_example(lambda x, w: fn(x, w), [input, weight])
            else:
                match.replace_by_example(fn, [input, weight, bias])

        patterns = PatternMatcherPass()
        register_graph_pattern(CONVOLUTION, extra_check=check, pass_dict=patterns)(replace)
        patterns.apply(gm.graph)
        if report.rewritten:
            gm.graph.lint()
            gm.recompile()
        record(report, where)
        return report
