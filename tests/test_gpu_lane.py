"""The GPU test lane: every entry point on the real patchify shapes; values, strides and gradients against the conv.

Entry points: torch.compile(backend="conv_rewrite") (by name; and conv_rewrite.backend(policy="auto")),
torch.compile(options=inductor_options()), convert_ (eager, and then torch.compile), rewrite() of a torch.export
module, AOTInductor (CUDA only); each on the conv as the graph output and on its tokens (.flatten(2).transpose(1, 2)).
``--device cuda`` (bench/gpu_lane.sh): the GPU shapes of bench/shapes.py (with GLM-4V and a Qwen2.5-VL-shaped conv
with a bias) in bf16, three also in fp16 and fp32, against the conv in fp32 without TF32. ``--device cpu`` (CI, the
default): the tiny shape in fp64 and the CPU shapes in fp32, against the conv in fp64. A result passes when its max
abs error is at most twice that of the conv computed in the same dtype (cuDNN on CUDA) plus a small eps, and the
output has the conv's strides."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn as nn

import conv_rewrite
from bench.shapes import CPU_SHAPES, GPU_SHAPES, TINY_SHAPES, Shape

# Conv3d patch embeddings of DESIGN.md section 9: one output position per sample (L = 1), with a bias; added to the
# GPU shapes unless bench/shapes.py holds them already.
EXTRA_GPU_SHAPES = (
    Shape(
        "glm4v_16k",
        "DESIGN.md s9: GLM-4V Conv3d(3->1536,(2,14,14)), bias, 16k patches",
        (16384, 3, 2, 14, 14),
        1536,
        (2, 14, 14),
    ),
    Shape(
        "qwen25vl_16k_bias",
        "DESIGN.md s9: Qwen2.5-VL PatchEmbed with a bias, 16k patches",
        (16384, 3, 2, 14, 14),
        1280,
        (2, 14, 14),
    ),
)
ALL_GPU = GPU_SHAPES + tuple(s for s in EXTRA_GPU_SHAPES if s.name not in {g.name for g in GPU_SHAPES})
# Gradients: the largest output (Wan 14B), L = 1 with and without a bias, 3-d with K > O, 2-d, a cropped Conv1d.
GRAD_GPU = ("wan14b_720p", "qwen25vl_16k", "glm4v_16k", "videomae_b", "cogvideox_49f", "wav2vec2_l5")
# convert_ + torch.compile: the gradient shapes plus the stride-sensitive ones and the other GEMM forms.
CORE_GPU = GRAD_GPU + ("siglip_so400m", "mochi", "wan13b_480p", "vit_b16_224", "acestep_conv1d")
# fp16 and fp32 besides bf16: weight @ rows^T with a folded bias (3-d), free view + copy (2-d), L = 1 with a bias.
DTYPE_GPU = ("wan13b_480p", "vit_b16_224", "glm4v_16k")
AOTI_GPU = (("cogvideox_49f", "conv"), ("wan13b_480p", "tokens"))

# Entry points. "always" ones must rewrite the conv; backend_auto may keep it (then only values and strides count).
CONVERT_EAGER, EXPORT, BACKEND, INDUCTOR_OPTIONS, BACKEND_AUTO, CONVERT_COMPILE, AOTI = (
    "convert_eager",
    "export_rewrite",
    "backend_name",
    "inductor_options",
    "backend_auto",
    "convert_compile",
    "aoti",
)
GRAD_ENTRIES = (BACKEND, BACKEND_AUTO, CONVERT_EAGER, CONVERT_COMPILE)
VARIANTS = ("conv", "tokens")

# eps relative to the reference's largest magnitude (fp64: absolute); the conv's own error in that dtype comes on top.
EPS = {torch.bfloat16: 2.0**-10, torch.float16: 2.0**-13, torch.float32: 1e-5}
FP64_TOL = 1e-10
_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64"}


@dataclass(frozen=True)
class Case:
    shape: Shape
    dtype: torch.dtype
    entry: str
    variant: str
    grads: bool = False

    @property
    def id(self) -> str:
        grad = "-grad" if self.grads else ""
        return f"{self.shape.name}-{_DTYPE_NAMES[self.dtype]}-{self.variant}-{self.entry}{grad}"


def _gpu_cases() -> Iterator[Case]:
    """In the order of what matters most, should the run be cut short: bf16 through each entry point, AOTInductor,
    then fp16 and fp32."""
    by_name = {s.name: s for s in ALL_GPU}
    bf16 = torch.bfloat16
    for entry in (CONVERT_EAGER, EXPORT, BACKEND, INDUCTOR_OPTIONS, BACKEND_AUTO, CONVERT_COMPILE):
        # inductor_options rewrites the graph backend_name does, and auto's CUDA cost model differs from "always"
        # only on wav2vec2: both on the gradient shapes only
        names = {CONVERT_COMPILE: CORE_GPU, INDUCTOR_OPTIONS: GRAD_GPU, BACKEND_AUTO: GRAD_GPU}.get(
            entry, [s.name for s in ALL_GPU]
        )
        for name in names:
            for variant in VARIANTS:
                yield Case(by_name[name], bf16, entry, variant, entry in GRAD_ENTRIES and name in GRAD_GPU)
    for name, variant in AOTI_GPU:
        yield Case(by_name[name], bf16, AOTI, variant)
    for dtype, compiled_variant in ((torch.float16, "tokens"), (torch.float32, "conv")):
        for name in DTYPE_GPU:
            for entry in (CONVERT_EAGER, EXPORT, BACKEND):
                for variant in VARIANTS if entry != BACKEND else (compiled_variant,):
                    yield Case(by_name[name], dtype, entry, variant)


def _cpu_cases() -> Iterator[Case]:
    """CI: the tiny shape in fp64 through every entry point, and one CPU shape in fp32 per entry point (both variants
    where nothing is compiled, one where something is: a compile costs seconds on 2 cores)."""
    tiny = TINY_SHAPES[0]
    cpu = {s.name: s for s in CPU_SHAPES}
    cpu_cases = {
        CONVERT_EAGER: ("wan_480p_2f", VARIANTS),
        EXPORT: ("qwen25vl_512", VARIANTS),
        BACKEND: ("vit_b16_224_b2", ("conv",)),
        INDUCTOR_OPTIONS: ("acestep_conv1d", ("tokens",)),
        BACKEND_AUTO: ("wan_480p_2f", ("tokens",)),
        CONVERT_COMPILE: ("qwen25vl_512", ("conv",)),
    }
    for entry, (name, variants) in cpu_cases.items():
        for variant in VARIANTS:
            yield Case(tiny, torch.float64, entry, variant, entry in (BACKEND, CONVERT_EAGER, CONVERT_COMPILE))
        for variant in variants:
            yield Case(cpu[name], torch.float32, entry, variant, entry == CONVERT_EAGER)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" not in metafunc.fixturenames:
        return
    on_cuda = torch.device(metafunc.config.getoption("--device")).type == "cuda"
    cases = list(_gpu_cases() if on_cuda else _cpu_cases())
    params = [pytest.param(c, id=c.id, marks=[pytest.mark.gpu] if on_cuda else []) for c in cases]
    metafunc.parametrize("case", params)


@pytest.fixture(autouse=True, scope="module")
def _threads(request: pytest.FixtureRequest) -> Iterator[None]:
    """On the CPU, one intra-op thread (see core_helpers.one_thread): CI's 2 cores stay predictable."""
    if torch.device(request.config.getoption("--device")).type == "cuda":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _free_memory() -> Iterator[None]:
    """The largest shapes hold GBs of outputs and gradients: hand them back before the next shape. (No gc.collect():
    it costs 0.5 s a test with torch loaded; the test's tensors go when its frame does.)"""
    yield
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Tokens(nn.Module):
    """The usual consumer: the patch embedding's output as (B, L, O) tokens."""

    def __init__(self, proj: nn.Module):
        super().__init__()
        self.proj = proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def _conv(shape: Shape, device: str, dtype: torch.dtype) -> nn.Module:
    cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[shape.dims]
    conv = cls(shape.x[1], shape.out_channels, shape.kernel, stride=shape.kernel, bias=shape.bias)
    return conv.to(device=device, dtype=dtype)


def _model(conv: nn.Module, variant: str) -> nn.Module:
    return conv if variant == "conv" else Tokens(conv)


def _output_shape(shape: Shape, variant: str) -> tuple[int, ...]:
    out = [s // k for s, k in zip(shape.x[2:], shape.kernel)]
    if variant == "conv":
        return (shape.x[0], shape.out_channels, *out)
    length = 1
    for o in out:
        length *= o
    return (shape.x[0], length, shape.out_channels)


@contextmanager
def _exact_fp32(device: str) -> Iterator[None]:
    """On CUDA, the fp32 reference conv without TF32 (cuDNN convs use TF32 by default). Only the legacy flag is
    touched: mixing it with the fp32_precision API makes torch refuse to read either."""
    if torch.device(device).type != "cuda":
        yield
        return
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = old


def _run(
    fn: Callable[[torch.Tensor], torch.Tensor],
    params: list[torch.Tensor],
    x: torch.Tensor,
    grad_out: torch.Tensor | None,
) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """The output, and the gradients of input, weight (and bias) for ``grad_out``; no autograd without it."""
    if grad_out is None:
        with torch.no_grad():
            return fn(x), None
    x = x.detach().requires_grad_()
    out = fn(x)
    grads = torch.autograd.grad(out, [x, *params], grad_out)
    return out.detach(), list(grads)


def _max_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return (got.detach().to(ref.dtype) - ref).abs().max().item() if ref.numel() else 0.0


def _bound(dtype: torch.dtype, conv_error: float, ref: torch.Tensor) -> float:
    if dtype == torch.float64:
        return 2 * conv_error + FP64_TOL
    scale = max(1.0, ref.abs().max().item()) if ref.numel() else 1.0
    return 2 * conv_error + EPS[dtype] * scale


def _build(entry: str, model: nn.Module, x: torch.Tensor, tmp_path: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The entry point applied to ``model`` (which it may change in place); compiles happen at the first call."""
    if entry == BACKEND:
        return torch.compile(model, backend="conv_rewrite")  # by name; tests/conftest.py makes the policy "always"
    if entry == BACKEND_AUTO:
        return torch.compile(model, backend=conv_rewrite.backend(policy="auto"))
    if entry == INDUCTOR_OPTIONS:
        return torch.compile(model, options=conv_rewrite.inductor_options(policy="always"))
    if entry == CONVERT_EAGER:
        conv_rewrite.convert_(model, policy="always")
        return model
    if entry == CONVERT_COMPILE:
        conv_rewrite.convert_(model, policy="always")
        return torch.compile(model)
    if entry == EXPORT:
        gm = torch.export.export(model, (x.detach(),)).module()
        conv_rewrite.rewrite(gm, policy="always")
        return gm
    if entry == AOTI:
        path = torch._inductor.aoti_compile_and_package(
            torch.export.export(model, (x.detach(),)),
            package_path=str(tmp_path / "model.pt2"),
            inductor_configs=conv_rewrite.inductor_options(policy="always"),
        )
        return torch._inductor.aoti_load_package(path)
    raise AssertionError(entry)


def test_entry_point_matches_the_conv(case: Case, device: str, tmp_path: Any) -> None:
    shape, dtype = case.shape, case.dtype
    ref_dtype = torch.float32 if torch.device(device).type == "cuda" else torch.float64
    torch.manual_seed(0)
    conv = _conv(shape, device, dtype)
    x = torch.randn(shape.x, device=device, dtype=dtype)
    grad_out = torch.randn(_output_shape(shape, case.variant), device=device, dtype=dtype) if case.grads else None
    names = ["input", "weight", "bias"][: 2 + shape.bias]

    # The reference: the same (rounded) operands, the conv in fp32 without TF32 (CUDA) or in fp64 (CPU).
    ref_conv = copy.deepcopy(conv).to(ref_dtype)
    with _exact_fp32(device):
        ref, ref_grads = _run(
            _model(ref_conv, case.variant),
            list(ref_conv.parameters()),
            x.to(ref_dtype),
            None if grad_out is None else grad_out.to(ref_dtype),
        )
    del ref_conv

    # The conv in the tested dtype, as users run it (cuDNN on CUDA): its error sets the bound.
    base, base_grads = _run(_model(conv, case.variant), list(conv.parameters()), x, grad_out)
    base_shape, base_stride, base_error = base.shape, base.stride(), _max_error(base, ref)
    base_grad_errors = [_max_error(g, r) for g, r in zip(base_grads, ref_grads)] if base_grads else None
    del base, base_grads

    model = _model(copy.deepcopy(conv), case.variant)
    params = list(model.parameters())
    # Inductor's caches skip its passes on a hit (README): the passes must run for their report
    caches_off = case.entry in (INDUCTOR_OPTIONS, AOTI)
    with conv_rewrite.collect_reports() as report, torch._inductor.config.patch(force_disable_caches=caches_off):
        fn = _build(case.entry, model, x, tmp_path)
        out, grads = _run(fn, params, x, grad_out)

    assert len(report) == 1, f"expected one conv in the report, got:\n{report}"
    rewritten = len(report.rewritten) == 1
    if case.entry != BACKEND_AUTO:
        assert rewritten, f"{case.entry} did not rewrite the conv:\n{report}"

    row = report.rows[0]
    assert out.shape == base_shape and out.dtype == dtype, f"{out.shape} {out.dtype} != the conv's {base_shape} {dtype}"
    error, bound = _max_error(out, ref), _bound(dtype, base_error, ref)
    assert error <= bound, (
        f"output: max abs error {error:.3g} > {bound:.3g} (2 x the {_DTYPE_NAMES[dtype]} conv's {base_error:.3g} "
        f"+ eps; reference: the conv in {_DTYPE_NAMES[ref_dtype]}; GEMM output layout {row.output_layout!r})"
    )
    sized = [i for i, n in enumerate(base_shape) if n > 1]
    assert [out.stride(i) for i in sized] == [base_stride[i] for i in sized], (
        f"output strides {out.stride()} != the conv's {base_stride} (GEMM output layout {row.output_layout!r}; "
        f"{row.reason})"
    )
    if out.stride() != base_stride:
        # Only size-1 dims differ. Under autograd AOTAutograd regenerates a view output and restrides its size-1
        # dims (B = 1 or L = 1 tokens), for the conv compiled without the rewrite too: that is the bar there.
        plain_model = _model(copy.deepcopy(conv), case.variant)
        plain, _ = _run(torch.compile(plain_model), list(plain_model.parameters()), x, grad_out)
        assert out.stride() == plain.stride(), (
            f"output strides {out.stride()} != the conv's {base_stride} in eager and {plain.stride()} under plain "
            f"torch.compile (GEMM output layout {row.output_layout!r})"
        )
        del plain
    del out

    if grads is None or not rewritten:
        return
    for name, got, want, conv_error in zip(names, grads, ref_grads, base_grad_errors):
        assert got.shape == want.shape and got.dtype == dtype, f"grad {name}: {got.shape} {got.dtype}"
        error, bound = _max_error(got, want), _bound(dtype, conv_error, want)
        assert error <= bound, (
            f"grad {name}: max abs error {error:.3g} > {bound:.3g} (2 x the {_DTYPE_NAMES[dtype]} conv's "
            f"{conv_error:.3g} + eps; reference: the conv in {_DTYPE_NAMES[ref_dtype]}; layout {row.output_layout!r})"
        )
