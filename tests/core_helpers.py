"""Shared by the core tests: the fp64 reference conv, conv detection in graphs, graph forms and comparisons."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

aten = torch.ops.aten

TOL = 1e-10

# Every callable a graph can hold a convolution as (DESIGN.md section 2), written out independently of the library.
CONV_TARGETS = {
    torch.conv1d,
    torch.conv2d,
    torch.conv3d,
    torch.conv_transpose1d,
    torch.conv_transpose2d,
    torch.conv_transpose3d,
    torch.convolution,
    aten.convolution.default,
    aten._convolution.default,
    aten.conv1d.default,
    aten.conv2d.default,
    aten.conv3d.default,
    aten.conv1d.padding,
    aten.conv2d.padding,
    aten.conv3d.padding,
    aten.conv_transpose1d.default,
    aten.conv_transpose2d.input,
    aten.conv_transpose3d.input,
}


def reference_conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """The real convNd with stride == kernel, padding 0."""
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[w.dim()]
    return conv(x, w, b, stride=tuple(w.shape[2:]))


def conv_nodes(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    """The nodes of ``gm`` that still compute a convolution."""
    found = []
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in CONV_TARGETS:
            found.append(node)
        elif node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), nn.modules.conv._ConvNd):
            found.append(node)
    return found


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach() - b.detach()).abs().max().item() if a.numel() else 0.0


def assert_same_result(got: Any, want: Any, *, strides: bool = True) -> None:
    """Same structure, shapes, dtypes and (by default) strides; values within ``TOL`` (fp64)."""
    if isinstance(want, (tuple, list)):
        assert isinstance(got, (tuple, list)) and len(got) == len(want)
        for g, w in zip(got, want):
            assert_same_result(g, w, strides=strides)
        return
    if not isinstance(want, torch.Tensor):
        assert got == want
        return
    assert got.shape == want.shape and got.dtype == want.dtype
    assert max_abs_diff(got, want) <= TOL
    if strides:
        assert got.stride() == want.stride(), f"strides {got.stride()} != the conv's {want.stride()}"


class ConvLeafTracer(torch.fx.Tracer):
    """symbolic_trace, but every nn.ConvNd (subclasses too) stays one call_module node."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, nn.modules.conv._ConvNd) or super().is_leaf_module(m, module_qualified_name)


def trace_leaf(model: nn.Module) -> torch.fx.GraphModule:
    return torch.fx.GraphModule(model, ConvLeafTracer().trace(model))


def shape_propagated(gm: torch.fx.GraphModule, *inputs: torch.Tensor) -> torch.fx.GraphModule:
    ShapeProp(gm).propagate(*inputs)
    return gm


class Wrap(nn.Module):
    """Holds a conv (or any module) under a dotted path, as models do: ``blocks.0.proj``."""

    def __init__(self, inner: nn.Module, post: Callable[[torch.Tensor], Any] | None = None):
        super().__init__()
        self.blocks = nn.ModuleList([nn.ModuleDict({"proj": inner})])
        self.post = post

    def forward(self, x: torch.Tensor) -> Any:
        y = self.blocks[0]["proj"](x)
        return self.post(y) if self.post is not None else y


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Run on one intra-op thread: these are tiny ops, and on a busy 2-core machine OpenMP threads that spin for
    each other make them 100x slower. Import this fixture into a test module to apply it there."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
