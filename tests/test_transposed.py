"""ConvTranspose with stride == kernel (the inverse layout): exact in fp64 in every graph form, GEMMs in training."""

import pytest
import torch
import torch.fx
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.passes.shape_prop import ShapeProp

import conv_rewrite
import conv_rewrite.compile
from conv_rewrite.normalize import conv_call
from conv_rewrite.patchify import unpatchify_conv_transpose

aten = torch.ops.aten
TRANSPOSED = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
FUNCTIONAL = {1: torch.conv_transpose1d, 2: torch.conv_transpose2d, 3: torch.conv_transpose3d}
CONV_OPS = {aten.convolution.default, aten.convolution_backward.default}


def _convs(gm):
    return [n for n in gm.graph.nodes if conv_call(n, gm) is not None]


@st.composite
def _cases(draw):
    dims = draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    output_padding = tuple(draw(st.integers(0, k - 1)) for k in kernel)
    sizes = tuple(draw(st.integers(1, 4)) for _ in range(dims))
    return dims, kernel, output_padding, sizes, draw(st.integers(1, 3)), draw(st.booleans())


@settings(max_examples=40, deadline=None)
@given(_cases())
def test_unpatchify_equals_conv_transpose_fp64(case):
    dims, kernel, output_padding, sizes, batch, bias = case
    module = TRANSPOSED[dims](3, 5, kernel, stride=kernel, output_padding=output_padding, bias=bias).double()
    x = torch.randn(batch, 3, *sizes, dtype=torch.float64)
    ref = module(x)
    out = unpatchify_conv_transpose(x, module.weight, module.bias, output_padding=output_padding)
    assert out.shape == ref.shape and out.is_contiguous()
    assert (out - ref).abs().max().item() <= 1e-10
    unbatched = unpatchify_conv_transpose(x[0], module.weight, module.bias, output_padding=output_padding)
    assert (unbatched - module(x[0])).abs().max().item() <= 1e-10


class UpBlock(nn.Module):
    """A MONAI/SAM-style up-block: ConvTranspose k == s, then a pointwise op."""

    def __init__(self, dims: int, output_padding: int = 0, bias: bool = True):
        super().__init__()
        self.up = TRANSPOSED[dims](4, 6, 2, stride=2, output_padding=output_padding, bias=bias)

    def forward(self, x):
        return torch.relu(self.up(x))


class FunctionalUp(nn.Module):
    def __init__(self, dims: int):
        super().__init__()
        self.dims = dims
        self.weight = nn.Parameter(torch.randn(4, 6, *(2,) * dims))
        self.bias = nn.Parameter(torch.randn(6))

    def forward(self, x):
        return FUNCTIONAL[self.dims](x, self.weight, self.bias, 2, 0, 1)


def _input(dims, batch=2):
    return torch.randn(batch, 4, *(3, 4, 5)[:dims], dtype=torch.float64)


def _graphs(model, x):
    """The graph forms: symbolic_trace (+ShapeProp), make_fx (aten.convolution transposed=True), torch.export."""
    traced = torch.fx.symbolic_trace(model)
    shaped = torch.fx.symbolic_trace(model)
    ShapeProp(shaped).propagate(x)
    yield "symbolic_trace", traced
    yield "symbolic_trace+ShapeProp", shaped
    yield "make_fx", make_fx(model)(x)
    yield "export", torch.export.export(model, (x,)).module()
    yield "export decomposed", torch.export.export(model, (x,)).run_decompositions().module()


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("model_fn", [UpBlock, FunctionalUp, lambda d: UpBlock(d, output_padding=1, bias=False)])
def test_every_graph_form_rewrites_exactly(dims, model_fn):
    model = model_fn(dims).double()
    for batch in (1, 3):
        x = _input(dims, batch)
        ref = model(x)
        for form, gm in _graphs(model, x):
            report = conv_rewrite.rewrite(gm, policy="always")
            assert [r.decision for r in report.rows] == ["rewritten"], (form, str(report))
            assert report.rows[0].transposed and report.rows[0].reason.startswith("transposed, stride == kernel")
            assert not _convs(gm), form
            out = gm(x)
            assert (out - ref).abs().max().item() <= 1e-10, form
            assert out.stride() == ref.stride(), form


def test_report_gemm_is_rows_by_cin_by_cout_times_kernel():
    model = UpBlock(3).double()
    x = _input(3)
    gm = make_fx(model)(x)
    row = conv_rewrite.rewrite(gm, policy="always").rows[0]
    assert row.gemm == (2 * 3 * 4 * 5, 4, 6 * 8)


def test_aten_pattern_pass_rewrites_transposed():
    model = UpBlock(2, output_padding=1)
    x = _input(2).float()
    gm = torch.export.export(model, (x,)).run_decompositions().module()
    report = conv_rewrite.compile.AtenConvRewritePass(conv_rewrite.Options(policy="always")).apply(gm)
    assert [r.decision for r in report.rows] == ["rewritten"]
    assert not [n for n in gm.graph.nodes if n.target is aten.convolution.default]
    torch.testing.assert_close(gm(x), model(x), atol=1e-5, rtol=1e-5)


def test_output_size_argument_is_left():
    class WithOutputSize(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.ConvTranspose2d(4, 6, 2, stride=2)

        def forward(self, x):
            return self.up(x, output_size=[7, 9])

    gm = torch.fx.symbolic_trace(WithOutputSize())
    report = conv_rewrite.rewrite(gm, policy="always")
    assert [r.reason for r in report.skipped] == ["output_size given at call time"]


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_training_grads_equal_and_no_convolution_in_aot_graphs(dims):
    graphs = []

    def record(gm, example_inputs):
        graphs.append({n.target for n in gm.graph.nodes if n.op == "call_function"})
        return gm

    from torch._dynamo.backends.common import aot_autograd

    torch.manual_seed(0)
    model = UpBlock(dims, output_padding=1).double()
    x = _input(dims)
    backend = conv_rewrite.backend(inner=aot_autograd(fw_compiler=record, bw_compiler=record), policy="always")
    compiled = torch.compile(model, backend=backend)

    def grads(fn):
        model.zero_grad()
        xi = x.clone().requires_grad_(True)
        fn(xi).square().sum().backward()
        return [xi.grad] + [p.grad for p in model.parameters()]

    ref = grads(model)
    got = grads(compiled)
    for g, r in zip(got, ref):
        assert (g - r).abs().max().item() <= 1e-10
    assert len(graphs) == 2 and not any(CONV_OPS & targets for targets in graphs)
    assert [r.decision for r in backend.report.rows] == ["rewritten"]
