"""Every graph form a patchify conv appears in (DESIGN.md section 2) is found, rewritten and leaves no conv behind.

Each test runs the rewritten graph against the original module or function in fp64 (values within 1e-10, same
strides) and pins the graph structure: which node the conv was, that no conv node is left, what the report says.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from core_helpers import (  # noqa: F401 (one_thread: autouse)
    Wrap,
    assert_same_result,
    aten,
    conv_nodes,
    one_thread,
    shape_propagated,
    trace_leaf,
)
from torch.fx.experimental.proxy_tensor import make_fx

import conv_rewrite
from conv_rewrite.patchify import patchify_conv, patchify_conv_like_conv

# run_decompositions() warns from inside torch (a deprecated pytree LeafSpec check); nothing to act on here.
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")

FP64 = torch.float64
CONV_MODULES = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
# Kernels and input sizes per dims: no size is a multiple of its kernel (the conv crops; so must the rewrite).
KERNELS = {1: (2,), 2: (2, 3), 3: (1, 2, 2)}
SIZES = {1: (9,), 2: (7, 8), 3: (5, 7, 9)}


def _input(dims: int, batch: int = 2, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, channels, *SIZES[dims], dtype=FP64, generator=torch.Generator().manual_seed(seed))


def _conv(dims: int, bias: bool = True, out_channels: int = 4) -> nn.Module:
    k = KERNELS[dims]
    return CONV_MODULES[dims](3, out_channels, k, stride=k, bias=bias).double()


def rewrite_and_check(
    gm: torch.fx.GraphModule, inputs: tuple[Any, ...], want: Any, rows: int = 1
) -> conv_rewrite.Report:
    """Rewrite ``gm``; every conv must be rewritten and gone, and the graph must still compute ``want`` exactly."""
    assert len(conv_nodes(gm)) == rows
    report = conv_rewrite.rewrite(gm)
    assert [r.decision for r in report] == ["rewritten"] * rows, str(report)
    assert conv_nodes(gm) == []
    with torch.no_grad():
        assert_same_result(gm(*inputs), want)
    return report


def _expected(fn: Callable[..., Any], *inputs: Any) -> Any:
    with torch.no_grad():
        return fn(*inputs)


# --- torch.fx.symbolic_trace: call_module nn.ConvNd ---------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_symbolic_trace_conv_module_is_rewritten(dims: int, bias: bool) -> None:
    model = Wrap(_conv(dims, bias))
    x = _input(dims)
    gm = torch.fx.symbolic_trace(model)
    (node,) = conv_nodes(gm)
    assert node.op == "call_module" and node.target == "blocks.0.proj"
    (row,) = rewrite_and_check(gm, (x,), _expected(model, x))
    c, k, o = 3, KERNELS[dims], 4
    assert (row.node, row.module, row.op, row.dims) == ("blocks_0_proj", "blocks.0.proj", f"nn.Conv{dims}d", dims)
    assert row.kernel == row.stride == k and row.input_shape is None
    # No shapes recorded: the layout is chosen at run time as the conv would; K = C * prod(k) is still known.
    assert row.output_layout == "as conv at run time"
    assert row.gemm == (None, c * math.prod(k), o)
    assert [n.target for n in gm.graph.nodes if n.op == "call_function"] == [patchify_conv_like_conv]


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_symbolic_trace_with_shape_prop_records_the_input_and_picks_the_conv_layout(dims: int) -> None:
    model = Wrap(_conv(dims))
    x = _input(dims)
    gm = shape_propagated(torch.fx.symbolic_trace(model), x)
    (row,) = rewrite_and_check(gm, (x,), _expected(model, x))
    assert row.input_shape == tuple(x.shape)
    assert row.output_layout == "contiguous"  # the conv output is the graph output
    m = 2 * math.prod(s // k for s, k in zip(SIZES[dims], KERNELS[dims]))
    assert row.gemm == (m, 3 * math.prod(KERNELS[dims]), 4)
    (call,) = [n for n in gm.graph.nodes if n.op == "call_function"]
    assert call.target is patchify_conv and call.kwargs == {"contiguous_output": True}


def test_unbatched_input_through_a_traced_conv_module() -> None:
    model = Wrap(_conv(2))
    x = _input(2)[0]
    rewrite_and_check(torch.fx.symbolic_trace(model), (x,), _expected(model, x))
    rewrite_and_check(shape_propagated(torch.fx.symbolic_trace(model), x), (x,), _expected(model, x))


class PatchConv(nn.Conv2d):
    """A subclass that keeps nn.Conv2d's forward: still exactly a conv."""


@pytest.mark.parametrize("tracer", ["leaf", "symbolic_trace"])
def test_conv_subclass_without_forward_override_is_rewritten(tracer: str) -> None:
    model = Wrap(PatchConv(3, 4, 2, stride=2).double())
    x = _input(2)
    gm = trace_leaf(model) if tracer == "leaf" else torch.fx.symbolic_trace(model)
    (row,) = rewrite_and_check(gm, (x,), _expected(model, x))
    # As a leaf it is one call_module; symbolic_trace inlines a non-torch.nn module down to torch.conv2d.
    assert row.op == ("nn.PatchConv" if tracer == "leaf" else "torch.conv2d")
    assert row.module == "blocks.0.proj"


def test_symbolic_trace_of_a_conv_module_itself_gives_a_torch_call_on_get_attr_weights() -> None:
    model = _conv(3)
    x = _input(3)
    gm = torch.fx.symbolic_trace(model)
    (node,) = conv_nodes(gm)
    assert node.target is torch.conv3d and node.args[1].op == "get_attr"
    (row,) = rewrite_and_check(gm, (x,), _expected(model, x))
    assert row.op == "torch.conv3d" and row.kernel == KERNELS[3]


# --- torch-level functional calls, weights as get_attr ----------------------------------------------------------

FUNCTIONAL_FORMS: dict[str, tuple[int, Callable[..., torch.Tensor]]] = {
    "F.conv3d stride tuple": (3, lambda x, w, b: F.conv3d(x, w, b, stride=(1, 2, 2))),
    "F.conv3d dilation on the kernel-1 dim": (3, lambda x, w, b: F.conv3d(x, w, b, (1, 2, 2), 0, (3, 1, 1))),
    "F.conv1d stride int": (1, lambda x, w, b: F.conv1d(x, w, b, 2)),
    "torch.conv2d positional ints": (2, lambda x, w, b: torch.conv2d(x, w, b, 2, 0, 1, 1)),
    "torch.conv2d positional tuples": (2, lambda x, w, b: torch.conv2d(x, w, b, (2, 2), (0, 0), (1, 1), 1)),
    "torch.conv2d keywords": (
        2,
        lambda x, w, b: torch.conv2d(input=x, weight=w, bias=b, stride=(2, 2), padding=0, dilation=1, groups=1),
    ),
    "torch.conv2d padding='valid'": (2, lambda x, w, b: torch.conv2d(x, w, b, 2, "valid")),
    "F.conv2d padding='valid' keyword": (2, lambda x, w, b: F.conv2d(x, w, b, stride=[2, 2], padding="valid")),
    "F.conv2d padding 0 list": (2, lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=[0, 0])),
    "F.conv2d no bias": (2, lambda x, w, b: F.conv2d(x, w, stride=2)),
    "F.conv2d bias=None": (2, lambda x, w, b: F.conv2d(x, w, None, 2)),
    "torch.convolution": (2, lambda x, w, b: torch.convolution(x, w, b, [2, 2], [0, 0], [1, 1], False, [0, 0], 1)),
}


class Functional(nn.Module):
    def __init__(self, dims: int, fn: Callable[..., torch.Tensor]):
        super().__init__()
        kernel = (1, 2, 2) if dims == 3 else (2,) * dims
        gen = torch.Generator().manual_seed(3)
        self.weight = nn.Parameter(torch.randn(4, 3, *kernel, dtype=FP64, generator=gen))
        self.bias = nn.Parameter(torch.randn(4, dtype=FP64, generator=gen))
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, self.weight, self.bias)


@pytest.mark.parametrize("shape_prop", [False, True], ids=["no-meta", "shape-prop"])
@pytest.mark.parametrize("form", FUNCTIONAL_FORMS)
def test_functional_conv_with_get_attr_weights_is_rewritten(form: str, shape_prop: bool) -> None:
    dims, fn = FUNCTIONAL_FORMS[form]
    model = Functional(dims, fn)
    x = _input(dims)
    gm = torch.fx.symbolic_trace(model)
    if shape_prop:
        shape_propagated(gm, x)
    (node,) = conv_nodes(gm)
    assert node.op == "call_function" and node.target in (torch.conv1d, torch.conv2d, torch.conv3d, torch.convolution)
    (row,) = rewrite_and_check(gm, (x,), _expected(model, x))
    assert row.kernel == tuple(model.weight.shape[2:]) == row.stride
    assert row.padding in ("valid", (0,) * dims)
    assert row.output_layout == ("contiguous" if shape_prop else "as conv at run time")


def _placeholder_conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, w, b, stride=2)


def test_placeholder_weight_kernel_is_read_from_its_meta() -> None:
    x, w, b = _input(2), torch.randn(4, 3, 2, 2, dtype=FP64), torch.randn(4, dtype=FP64)
    gm = shape_propagated(torch.fx.symbolic_trace(_placeholder_conv), x, w, b)
    (node,) = conv_nodes(gm)
    assert node.args[1].op == "placeholder"
    (row,) = rewrite_and_check(gm, (x, w, b), _placeholder_conv(x, w, b))
    assert row.kernel == (2, 2) and row.gemm == (2 * 3 * 4, 12, 4)


def test_placeholder_weight_without_meta_is_skipped_and_untouched() -> None:
    x, w, b = _input(2), torch.randn(4, 3, 2, 2, dtype=FP64), torch.randn(4, dtype=FP64)
    gm = torch.fx.symbolic_trace(_placeholder_conv)
    code = gm.code
    (row,) = conv_rewrite.rewrite(gm)
    assert row.decision == "skipped" and row.reason.startswith("kernel unknown")
    assert row.kernel is None and gm.code == code and len(conv_nodes(gm)) == 1
    assert torch.equal(gm(x, w, b), _placeholder_conv(x, w, b))


# --- ATen level: make_fx, torch.export ----------------------------------------------------------------------------


def _assert_aten_level(gm: torch.fx.GraphModule) -> None:
    """An ATen graph stays ATen: the replacement is inlined as OpOverloads, each with a fake value in meta['val']."""
    for node in gm.graph.nodes:
        if node.op == "call_function":
            assert isinstance(node.target, torch._ops.OpOverload) or node.target.__module__ == "_operator", node
            assert "val" in node.meta, node
        assert node.target not in (patchify_conv, patchify_conv_like_conv)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_make_fx_aten_convolution_is_rewritten(dims: int, bias: bool) -> None:
    model = Wrap(_conv(dims, bias))
    x = _input(dims)
    gm = make_fx(model)(x)
    (node,) = conv_nodes(gm)
    assert node.target is aten.convolution.default
    (row,) = rewrite_and_check(gm, (x,), _expected(model, x))
    assert row.op == "aten.convolution.default" and row.output_layout == "contiguous"
    _assert_aten_level(gm)


def test_aten_convolution_with_one_element_lists_is_broadcast() -> None:
    """AOT/post-grad graphs may carry stride=[2] for a 2-d conv; ATen broadcasts it, so must the normalization."""

    def fn(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return aten.convolution.default(x, w, None, [2], [0], [1], False, [0], 1)

    x, w = _input(2), torch.randn(5, 3, 2, 2, dtype=FP64)
    gm = make_fx(fn)(x, w)
    (row,) = rewrite_and_check(gm, (x, w), F.conv2d(x, w, stride=2))
    assert (row.stride, row.padding, row.dilation) == ((2, 2), (0, 0), (1, 1))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_export_module_aten_convnd_is_rewritten(dims: int) -> None:
    model = Wrap(_conv(dims))
    x = _input(dims)
    gm = torch.export.export(model, (x,)).module()
    (node,) = conv_nodes(gm)
    assert node.target is getattr(aten, f"conv{dims}d").default
    (row,) = rewrite_and_check(gm, (x,), _expected(model, x))
    assert row.op == f"aten.conv{dims}d.default" and row.module == "blocks.0.proj"
    assert row.input_shape == tuple(x.shape)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_export_run_decompositions_aten_convolution_is_rewritten(dims: int) -> None:
    model = Wrap(_conv(dims))
    x = _input(dims)
    gm = torch.export.export(model, (x,)).run_decompositions().module()
    (node,) = conv_nodes(gm)
    assert node.target is aten.convolution.default
    (row,) = rewrite_and_check(gm, (x,), _expected(model, x))
    assert row.op == "aten.convolution.default" and row.module == "blocks.0.proj"
    _assert_aten_level(gm)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_export_of_padding_valid_gives_aten_convnd_padding_and_is_rewritten(dims: int) -> None:
    k = KERNELS[dims]
    model = Wrap(CONV_MODULES[dims](3, 4, k, stride=k, padding="valid").double())
    x = _input(dims)
    gm = torch.export.export(model, (x,)).module()
    (node,) = conv_nodes(gm)
    assert node.target is getattr(aten, f"conv{dims}d").padding
    assert len(node.args) == 4  # export drops the default padding: the schema's default is "valid"
    (row,) = rewrite_and_check(gm, (x,), _expected(model, x))
    assert row.op == f"aten.conv{dims}d.padding" and row.padding == "valid"


# --- Dynamo: the graph a torch.compile backend receives -----------------------------------------------------------


def test_dynamo_graph_with_placeholder_parameters_is_rewritten_static_and_dynamic() -> None:
    model = Wrap(_conv(3), post=lambda y: (y.flatten(2).transpose(1, 2), y))
    reports: list[conv_rewrite.Report] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Callable[..., Any]:
        assert [n.target for n in conv_nodes(gm)] == [torch.conv3d]
        reports.append(conv_rewrite.rewrite(gm))
        assert conv_nodes(gm) == []
        return gm.forward

    torch._dynamo.reset()
    try:
        compiled = torch.compile(model, backend=backend, dynamic=False)
        x = _input(3)
        assert_same_result(compiled(x), _expected(model, x))
        compiled = torch.compile(model, backend=backend, dynamic=True)
        for x in (_input(3), torch.randn(3, 3, 4, 9, 11, dtype=FP64)):
            assert_same_result(compiled(x), _expected(model, x))
    finally:
        torch._dynamo.reset()
    assert len(reports) == 2
    static, dynamic = reports[0][0], reports[1][0]
    assert static.op == dynamic.op == "torch.conv3d" and static.module == dynamic.module == "blocks.0.proj"
    assert static.rewritten and static.input_shape == (2, 3, 5, 7, 9) and static.output_layout == "contiguous"
    assert dynamic.rewritten and any(isinstance(s, str) for s in dynamic.input_shape)
    assert dynamic.gemm == (None, 12, 4)


# --- output strides ------------------------------------------------------------------------------------------------

GRAPH_FORMS: dict[str, Callable[[nn.Module, torch.Tensor], torch.fx.GraphModule]] = {
    "symbolic_trace": lambda m, x: torch.fx.symbolic_trace(m),
    "symbolic_trace+ShapeProp": lambda m, x: shape_propagated(torch.fx.symbolic_trace(m), x),
    "make_fx": lambda m, x: make_fx(m)(x),
    "export": lambda m, x: torch.export.export(m, (x,)).module(),
    "export+decompositions": lambda m, x: torch.export.export(m, (x,)).run_decompositions().module(),
}


@pytest.mark.parametrize("form", GRAPH_FORMS)
@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_graph_returning_the_conv_output_keeps_the_conv_strides(form: str, memory_format: str) -> None:
    model = Wrap(_conv(2))
    x = _input(2)
    if memory_format == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    want = _expected(model, x)
    (row,) = rewrite_and_check(GRAPH_FORMS[form](model, x), (x,), want)  # checks strides == the conv's
    if form != "symbolic_trace":
        free = want.movedim(1, -1).is_contiguous() and not want.is_contiguous()
        # channels-last: the free view's strides in a copy of its own (odd channel counts, size-1 dims)
        assert row.output_layout in (("free view", "channels-last") if free else ("contiguous",))


def _view_batch_channels(y: torch.Tensor) -> torch.Tensor:
    return y.view(y.shape[0] * y.shape[1], -1)


@pytest.mark.parametrize("form", GRAPH_FORMS)
def test_stride_sensitive_view_of_the_conv_output_still_runs(form: str) -> None:
    """conv(x).view(B * C, -1) needs the conv's contiguous strides: the free view would raise in .view."""
    model = Wrap(_conv(3), post=lambda y: torch.relu(_view_batch_channels(y)))
    x = _input(3)
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        _view_batch_channels(patchify_conv(x, model.blocks[0]["proj"].weight, None))  # why the layout matters
    (row,) = rewrite_and_check(GRAPH_FORMS[form](model, x), (x,), _expected(model, x))
    assert row.output_layout == ("as conv at run time" if form == "symbolic_trace" else "contiguous")


class PatchEmbed(nn.Module):
    """The consumer of DESIGN.md section 1: tokens = proj(x).flatten(2).transpose(1, 2), then a Linear."""

    def __init__(self, dims: int = 3, query_shape: bool = False):
        super().__init__()
        self.proj = _conv(dims, out_channels=8)
        self.norm = nn.Linear(8, 5).double()
        self.query_shape = query_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x)
        tokens = self.norm(y.flatten(2).transpose(1, 2))
        if self.query_shape:  # symbolic_trace records y.shape as getattr(y, "shape"): not a stride observation
            batch, channels = y.shape[:2]
            tokens = tokens.reshape(batch, -1, 5) * y.ndim
        return tokens


@pytest.mark.parametrize("form", [f for f in GRAPH_FORMS if f != "symbolic_trace"])
def test_flatten_transpose_linear_consumer_keeps_the_free_view(form: str) -> None:
    model = PatchEmbed()
    x = _input(3)
    (row,) = rewrite_and_check(GRAPH_FORMS[form](model, x), (x,), _expected(model, x))
    assert row.output_layout == "free view"


def test_shape_queries_on_the_conv_output_keep_the_free_view() -> None:
    model = PatchEmbed(query_shape=True)
    x = _input(3)
    gm = GRAPH_FORMS["symbolic_trace+ShapeProp"](model, x)
    assert any(n.target is getattr and n.args[1] == "shape" for n in gm.graph.nodes)
    (row,) = rewrite_and_check(gm, (x,), _expected(model, x))
    assert row.output_layout == "free view"


def test_conv_output_used_by_a_graph_output_and_a_free_consumer_gets_the_conv_layout() -> None:
    model = Wrap(_conv(3), post=lambda y: (y.flatten(2).transpose(1, 2), y))
    x = _input(3)
    (row,) = rewrite_and_check(make_fx(model)(x), (x,), _expected(model, x))
    assert row.output_layout == "contiguous"


def test_several_convs_in_one_graph_are_each_rewritten_in_graph_order() -> None:
    class TwoTowers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.video = _conv(3)
            self.audio = _conv(1, bias=False)

        def forward(self, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
            return self.video(v).flatten(2).sum(-1) + self.audio(a).sum(-1)

    model = TwoTowers()
    v, a = _input(3), _input(1)
    for gm in (torch.fx.symbolic_trace(model), make_fx(model)(v, a), torch.export.export(model, (v, a)).module()):
        report = rewrite_and_check(gm, (v, a), _expected(model, v, a), rows=2)
        assert [r.dims for r in report] == [3, 1]


# --- dynamic shapes ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_make_fx_symbolic_graph_is_rewritten_and_runs_at_other_sizes(bias: bool) -> None:
    model = Wrap(_conv(3, bias))  # parameters become graph constants; only the input's sizes are symbolic
    x = torch.randn(2, 3, 5, 6, 8, dtype=FP64)
    gm = make_fx(model, tracing_mode="symbolic", _allow_non_fake_inputs=True)(x)
    (row,) = rewrite_and_check(gm, (x,), _expected(model, x))
    assert isinstance(row.input_shape[0], str) and row.gemm == (None, 12, 4)
    _assert_aten_level(gm)
    for other in (torch.randn(1, 3, 4, 9, 11, dtype=FP64), torch.randn(3, 3, 2, 4, 5, dtype=FP64)):
        assert_same_result(gm(other), _expected(model, other))


def test_make_fx_symbolic_aten_view_of_the_output_keeps_the_conv_strides() -> None:
    # aten.view on symbolic sizes: whether it would succeed on the free layout for every size is not decided
    model = PatchEmbed()
    x = torch.randn(2, 3, 5, 6, 8, dtype=FP64)
    gm = make_fx(model, tracing_mode="symbolic", _allow_non_fake_inputs=True)(x)
    (row,) = rewrite_and_check(gm, (x,), _expected(model, x))
    assert row.output_layout == "contiguous"
    other = torch.randn(3, 3, 4, 9, 11, dtype=FP64)
    assert_same_result(gm(other), _expected(model, other))


def test_export_with_dynamic_batch_and_frames_is_rewritten_and_runs_at_other_sizes() -> None:
    model = Wrap(_conv(3))
    x = torch.randn(2, 3, 5, 6, 8, dtype=FP64)
    dynamic = {"x": {0: torch.export.Dim("batch"), 2: torch.export.Dim("frames")}}
    gm = torch.export.export(model, (x,), dynamic_shapes=dynamic).module()
    (row,) = rewrite_and_check(gm, (x,), _expected(model, x))
    assert isinstance(row.input_shape[0], str) and isinstance(row.input_shape[2], str)
    other = torch.randn(3, 3, 7, 6, 8, dtype=FP64)
    assert_same_result(gm(other), _expected(model, other))


def test_rewritten_graph_trains_like_the_conv() -> None:
    """symbolic_trace rewrites before autograd: gradients flow through the GEMM form to the same parameters."""
    model = PatchEmbed()
    x = _input(3).requires_grad_()
    gm = shape_propagated(torch.fx.symbolic_trace(model), x)
    conv_rewrite.rewrite(gm)
    want_grads = torch.autograd.grad(model(x).square().sum(), [x, *model.parameters()])
    got_grads = torch.autograd.grad(gm(x).square().sum(), [x, *gm.parameters()])
    for got, want in zip(got_grads, want_grads):
        assert_same_result(got, want, strides=False)


@pytest.mark.filterwarnings("ignore:Attempted to insert a get_attr Node with no underlying reference")
def test_parametrized_weight_is_read_through_the_parametrization_at_run_time() -> None:
    """torch.nn.utils.parametrizations (no hooks): the rewritten graph reads module.weight, recomputed per call."""
    conv = torch.nn.utils.parametrizations.weight_norm(_conv(2))
    model = Wrap(conv)
    x = _input(2)
    gm = shape_propagated(torch.fx.symbolic_trace(model), x)
    rewrite_and_check(gm, (x,), _expected(model, x))
    with torch.no_grad():
        conv.parametrizations.weight.original0.mul_(2)  # the magnitude g: the weight changes
    assert_same_result(gm(x), _expected(model, x))


@pytest.mark.parametrize("model", [PatchEmbed(), Wrap(_conv(3))], ids=["free view", "contiguous"])
def test_replacement_carries_shape_prop_metadata_true_to_what_it_computes(model: nn.Module) -> None:
    """Later convs read their input's shape from ShapeProp's tensor_meta, and layout planning replays on it."""
    x = _input(3)
    gm = shape_propagated(torch.fx.symbolic_trace(model), x)
    conv_rewrite.rewrite(gm)
    (new,) = [n for n in gm.graph.nodes if n.target is patchify_conv]
    carried = new.meta["tensor_meta"]
    shape_propagated(gm, x)  # what the replacement really computes
    assert (carried.shape, carried.stride) == (new.meta["tensor_meta"].shape, new.meta["tensor_meta"].stride)
