"""Issue 13 item 2: where the fastest exact contiguous form is unknown statically, Inductor times the conv itself
against the exact forms (``conv_rewrite::patch_conv``, custom-op autotuning). Only CUDA uses it; these tests force
the CPU through it (custom-op autotuning benchmarks on the CPU too, with Inductor's default config)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from core_helpers import reference_conv
from torch._inductor import select_algorithm
from torch._inductor.utils import run_and_get_code
from torch.fx.passes.shape_prop import ShapeProp

import conv_rewrite
import conv_rewrite.compile
from conv_rewrite import patchify
from conv_rewrite.patchify import AUTOTUNED_FORMS, WEIGHT_BMM_ADD, contiguous_form, patch_conv


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    return torch.empty(shape, device="meta").stride()


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "bias"),
    [((2, 3, 9), (8, 3, 2), True), ((2, 4, 7, 6), (16, 4, 2, 3), False), ((1, 2, 4, 6, 5), (5, 2, 2, 2, 2), True)],
)
def test_patch_conv_opcheck_and_forms(x_shape, w_shape, bias):
    x = torch.randn(x_shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(w_shape, dtype=torch.float64, requires_grad=True)
    b = torch.randn(w_shape[0], dtype=torch.float64, requires_grad=True) if bias else None
    torch.library.opcheck(patch_conv, (x, w, b))
    ref = reference_conv(x, w, b)
    for form in (patch_conv, *AUTOTUNED_FORMS):
        y = form(x, w, b)
        torch.testing.assert_close(y, ref, rtol=0, atol=1e-10)
        assert y.stride() == _contiguous_strides(tuple(ref.shape)), form
    grads = torch.autograd.grad(patch_conv(x, w, b).sum(), [t for t in (x, w, b) if t is not None])
    ref_grads = torch.autograd.grad(ref.sum(), [t for t in (x, w, b) if t is not None])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-10)


# What each candidate leaves in Inductor's output code (the fallback is an extern call of the op itself); the linear
# form's GEMM may be an addmm or a template on the CPU, so it is recognised by the absence of the others.
_MARKS = {
    "patch_conv_weight_gemm_add": "extern_kernels.bmm(",
    "patch_conv_weight_mm_over_samples_add": "extern_kernels.mm(",  # the linear form (with a bias) is an addmm
    "fallback": "torch.ops.conv_rewrite.patch_conv.default(",
}


def test_inductor_autotunes_the_unaligned_contiguous_conv(monkeypatch, no_inductor_cache):
    # O = 24 > K = 12 and L = 7 * 5 = 35, not a multiple of 8: the bmm + add form, whose speed is not known statically
    assert contiguous_form(2, 35, 12, 24, True) == WEIGHT_BMM_ADD
    monkeypatch.setattr(patchify, "AUTOTUNED_DEVICES", ("cuda", "cpu"))
    timings: list[dict] = []
    select_algorithm.add_feedback_saver(lambda t, name, *_: timings.append(t) if "patch_conv" in name else None)
    try:
        torch.manual_seed(0)
        conv = nn.Conv2d(3, 24, 2, stride=2)
        x = torch.randn(2, 3, 14, 11, requires_grad=True)
        backend = conv_rewrite.backend(policy="always")
        out, codes = run_and_get_code(torch.compile(conv, backend=backend), x)
    finally:
        select_algorithm.clear_feedback_savers()
    assert backend.report.rewritten
    ref = reference_conv(x.double(), conv.weight.double(), conv.bias.double())
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    assert out.stride() == conv(x).stride() == _contiguous_strides(tuple(ref.shape))

    # the conv itself and every exact form were timed; the output code runs the fastest
    assert len(timings) == 1 and len(timings[0]) == 1 + len(AUTOTUNED_FORMS)
    winner = min(timings[0], key=timings[0].get).name
    chosen = next((key for key in _MARKS if key in winner), "patch_conv_linear_copy")
    assert "patch_conv_linear_copy" in winner or chosen != "patch_conv_linear_copy", winner
    # the compiled forward (not the candidates' benchmark modules, which run_and_get_code returns too)
    [forward] = [code for code in codes if "_forward']" in code and "benchmark_conv_rewrite" not in code]
    assert chosen not in _MARKS or _MARKS[chosen] in forward, (winner, forward)
    assert all(mark not in forward for key, mark in _MARKS.items() if key != chosen), (winner, forward)

    grads = torch.autograd.grad(out.sum(), [x, conv.weight, conv.bias])
    ref_grads = torch.autograd.grad(ref.sum(), [x, conv.weight, conv.bias])  # the float64 conv's, through .double()
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("inner", ["inductor", "aot_eager"])
def test_static_choice_without_autotuning(inner, monkeypatch, no_inductor_cache):
    """On the CPU, and for any compiler but Inductor, the form stays the one ``contiguous_form`` chooses."""
    if inner == "aot_eager":
        monkeypatch.setattr(patchify, "AUTOTUNED_DEVICES", ("cuda", "cpu"))
    graphs: list[str] = []

    def spy(gm, example_inputs, **kwargs):
        graphs.append(str(gm.graph))
        return gm

    conv = nn.Conv2d(3, 24, 2, stride=2)
    x = torch.randn(2, 3, 14, 11)
    if inner == "aot_eager":
        from torch._dynamo.backends.common import aot_autograd

        compiled = torch.compile(conv, backend=conv_rewrite.backend(inner=aot_autograd(fw_compiler=spy)))
        out = compiled(x)
        assert graphs and all("patch_conv" not in g for g in graphs)
    else:
        out, codes = run_and_get_code(torch.compile(conv, backend=conv_rewrite.backend()), x)
        assert "conv_rewrite.patch_conv" not in codes[0] and "extern_kernels.bmm(" in codes[0]
    torch.testing.assert_close(out, conv(x), rtol=1e-5, atol=1e-5)


def test_convert_then_inductor_autotunes_and_eager_convert_never_does(monkeypatch, no_inductor_cache):
    """A converted module meets the unranked forms only when compiled: there Inductor times them against the conv."""
    monkeypatch.setattr(patchify, "AUTOTUNED_DEVICES", ("cuda", "cpu"))
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 24, 2, stride=2)
    x = torch.randn(2, 3, 14, 11, requires_grad=True)
    ref = reference_conv(x.double(), conv.weight.double(), conv.bias.double())
    conv_rewrite.convert_(conv, policy="always")

    calls: list[int] = []
    real_op = patchify.patch_conv
    monkeypatch.setattr(patchify, "patch_conv", lambda *args: calls.append(1) or real_op(*args))
    eager = conv(x)
    assert not calls  # eager folds the bias into the GEMM whatever the alignment
    torch.testing.assert_close(eager.double(), ref, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(patchify, "patch_conv", real_op)

    timings: list[dict] = []
    select_algorithm.add_feedback_saver(lambda t, name, *_: timings.append(t) if "patch_conv" in name else None)
    try:
        out = torch.compile(conv)(x)
    finally:
        select_algorithm.clear_feedback_savers()
    assert len(timings) == 1 and len(timings[0]) == 1 + len(AUTOTUNED_FORMS)  # the conv and every exact form
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    assert out.stride() == eager.stride() == _contiguous_strides(tuple(ref.shape))
    grads = torch.autograd.grad(out.sum(), [x, conv.weight, conv.bias])
    ref_grads = torch.autograd.grad(ref.sum(), [x, conv.weight, conv.bias])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


def test_symbolic_sizes_keep_the_static_form_and_compile_once(monkeypatch, no_inductor_cache):
    """Inductor's autotuning times nothing for symbolic sizes (it would run the conv for every size): a dynamic compile
    keeps the static form, exact over sizes of both parities, in one graph."""
    monkeypatch.setattr(patchify, "AUTOTUNED_DEVICES", ("cuda", "cpu"))
    torch.manual_seed(0)
    conv = nn.Conv3d(4, 32, (1, 2, 2), stride=(1, 2, 2))
    compiled = torch.compile(conv, backend=conv_rewrite.backend(policy="always"), dynamic=True)
    torch._dynamo.utils.counters.clear()
    timings: list[dict] = []
    select_algorithm.add_feedback_saver(lambda t, name, *_: timings.append(t) if "patch_conv" in name else None)
    for size in [(3, 8, 10), (5, 13, 14), (2, 6, 7)]:
        x = torch.randn(1, 4, *size, requires_grad=True)
        try:
            out = compiled(x)
        finally:
            select_algorithm.clear_feedback_savers()
        ref = reference_conv(x.double(), conv.weight.double(), conv.bias.double())
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
        assert out.stride() == conv(x).stride()
        grads = torch.autograd.grad(out.sum(), [x, conv.weight, conv.bias])
        ref_grads = torch.autograd.grad(ref.sum(), [x, conv.weight, conv.bias])
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert not timings


def test_exported_programs_and_aot_compiles_keep_plain_aten_ops(monkeypatch):
    """An exported program or an AOTInductor package must run where this library is not installed: no custom op."""
    from torch._inductor.virtualized import V

    monkeypatch.setattr(patchify, "AUTOTUNED_DEVICES", ("cuda", "cpu"))
    conv = nn.Conv2d(3, 24, 2, stride=2)
    x = torch.randn(2, 3, 14, 11)
    conv_rewrite.convert_(conv, policy="always")
    exported = torch.export.export(conv, (x,))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert not any("conv_rewrite" in t or "convolution" in t for t in targets), targets
    torch.testing.assert_close(exported.module()(x), conv(x), rtol=1e-5, atol=1e-5)

    gm = torch.fx.symbolic_trace(nn.Sequential(nn.Conv2d(3, 24, 2, stride=2)))
    ShapeProp(gm).propagate(x)
    with V.set_aot_compilation(True):
        conv_rewrite.compile.ConvRewritePass(conv_rewrite.Options(policy="always"))(gm.graph)
    assert "patchify_conv" in gm.code and "autotune" not in gm.code, gm.code


def test_convert_then_fullgraph_compile_has_no_graph_break(monkeypatch, no_inductor_cache):
    """The autotuning is registered where Dynamo does not trace (the op's fake kernel): no break, as plain compile."""
    monkeypatch.setattr(patchify, "AUTOTUNED_DEVICES", ("cuda", "cpu"))
    conv = nn.Conv2d(3, 24, 2, stride=2)
    x = torch.randn(2, 3, 14, 11)
    want = conv(x)
    conv_rewrite.convert_(conv, policy="always")
    torch._dynamo.utils.counters.clear()
    got = torch.compile(conv, fullgraph=True)(x)
    assert not torch._dynamo.utils.counters["graph_break"]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tuned", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("entry", ["backend", "inductor_options", "convert_ + compile"])
def test_autocast_output_dtype_is_the_convs(entry, bias, tuned, monkeypatch, no_inductor_cache):
    if tuned:
        monkeypatch.setattr(patchify, "AUTOTUNED_DEVICES", ("cuda", "cpu"))
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 24, 2, stride=2, bias=bias)  # O > K, L = 35: the bias-added form
    x = torch.randn(2, 3, 14, 11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = conv(x)
        if entry == "backend":
            compiled = torch.compile(conv, backend=conv_rewrite.backend(policy="always"))
        elif entry == "inductor_options":
            compiled = torch.compile(conv, options=conv_rewrite.inductor_options(policy="always"))
        else:
            conv_rewrite.convert_(conv, policy="always")
            compiled = torch.compile(conv)
        got = compiled(x)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
