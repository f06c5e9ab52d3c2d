"""explain(): what the rewrite does to a model under torch.compile, with the graph code before and after.

Dynamo captures the model's graphs as in real use (graph breaks, inlined modules, dynamic sizes); each graph is
copied and rewritten by ``rewrite``, the code the compiler path runs. Nothing is compiled: the graphs run eagerly.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.fx

from .._torch_private import automatic_dynamic_state_kept, modules_being_called
from ..normalize import module_names
from ..options import Options, make_options
from ..report import Report, ReportRow
from ..transform import rewrite_graph


@dataclass(frozen=True)
class GraphCode:
    """One Dynamo graph's code before and after the rewrite, as ``GraphModule.print_readable`` writes it."""

    name: str
    before: str
    after: str


class Explanation(Report):
    """The rows of every conv in the model's graphs (a Report) and each graph's code before and after the rewrite."""

    columns = (
        "module",
        "graph",
        "input_shape",
        "dtype",
        "kernel",
        "stride",
        "padding",
        "dilation",
        "groups",
        "decision",
        "reason",
        "gemm",
    )
    headers = (
        "module",
        "graph",
        "input",
        "dtype",
        "kernel",
        "stride",
        "padding",
        "dilation",
        "groups",
        "decision",
        "reason",
        "GEMM (M, K, N)",
    )

    def __init__(self, rows: list[ReportRow] | None = None, graphs: list[GraphCode] | None = None):
        super().__init__(rows)
        self.graphs: list[GraphCode] = list(graphs or [])

    def to_dict(self) -> dict[str, Any]:
        """Plain data: {"convs": [row dicts], "graphs": [{"name", "before", "after"}]}."""
        return {"convs": self.to_dicts(), "graphs": [asdict(g) for g in self.graphs]}

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> Explanation:
        """The Explanation ``to_json`` wrote."""
        data = json.loads(text)
        return cls([ReportRow.from_dict(d) for d in data["convs"]], [GraphCode(**g) for g in data["graphs"]])

    def __str__(self) -> str:
        return f"{super().__str__()}\n{self.summary()} in {len(self.graphs)} graph(s)"

    def __repr__(self) -> str:
        return f"<conv_rewrite.tools.explain.Explanation: {self.summary()} in {len(self.graphs)} graph(s)>"


class _Capture:
    """A Dynamo backend that rewrites a copy of each graph, keeps both codes, and runs the original eagerly."""

    def __init__(self, options: Options):
        self.options = options
        self.explanation = Explanation()

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any], **_: Any) -> Callable[..., Any]:
        name = f"graph {len(self.explanation.graphs)}"
        copy = _copy(gm)
        with module_names(modules_being_called()):
            self.explanation.extend(rewrite_graph(copy, self.options, where=name))
        self.explanation.graphs.append(GraphCode(name, _code(gm), _code(copy)))
        return gm.forward


def _copy(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A new GraphModule over a copy of ``gm``'s graph (node meta included) that shares its parameters."""
    graph = torch.fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}))
    return torch.fx.GraphModule(gm, graph)


def _code(gm: torch.fx.GraphModule) -> str:
    return gm.print_readable(print_output=False)


def _isolated() -> dict[str, Any]:
    """torch.compile keywords that keep this compile's cache entries apart from the user's (torch >= 2.13)."""
    return {"isolate_recompiles": True} if "isolate_recompiles" in inspect.signature(torch.compile).parameters else {}


def explain(
    model: Callable[..., Any],
    *example_inputs: Any,
    dynamic: bool = False,
    options: Options | dict[str, Any] | None = None,
    **kwargs: Any,
) -> Explanation:
    """Run ``model(*example_inputs)`` once under Dynamo and report what the rewrite does to each of its graphs.

    One row per conv: its module path, input, parameters, the decision with its reason, and for a rewritten conv
    the GEMM (M, K, N) it becomes; ``.graphs`` holds each graph's code before and after. ``dynamic=True`` traces
    with symbolic sizes as ``torch.compile(dynamic=True)`` does. Options (e.g. ``policy="never"``) as for
    ``rewrite``. The model runs eagerly without autograd; the user's own compiled functions are left as they were
    (a fresh compile whose seen sizes are forgotten afterwards, so they do not make later compiles dynamic).
    """
    capture = _Capture(make_options(options, **kwargs))
    compiled = torch.compile(model, backend=capture, dynamic=dynamic, **_isolated())
    with automatic_dynamic_state_kept(), torch.no_grad():
        compiled(*example_inputs)
    if not capture.explanation.graphs:
        raise RuntimeError(
            "Dynamo captured no graph of the model (is its forward skipped, or its recompile limit reached?)"
        )
    return capture.explanation
