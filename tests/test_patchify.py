"""The pure math: ``patchify_conv`` and ``patchify_conv_like_conv`` against the real fp64 convNd with stride == kernel.

Values within 1e-10, every layout promise (contiguous output, the free channels-last view, the conv's own strides)
and autograd, over hypothesis-drawn configurations and the real shapes of DESIGN.md section 6.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from core_helpers import TOL, max_abs_diff, one_thread, reference_conv  # noqa: F401 (one_thread: autouse)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conv_rewrite import patchify_conv
from conv_rewrite.patchify import patchify_conv_like_conv

FP64 = torch.float64
SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Case:
    x: torch.Tensor
    w: torch.Tensor
    b: torch.Tensor | None
    layout: str

    @property
    def batched(self) -> bool:
        return self.x.dim() == self.w.dim()


def _layout_input(shape: tuple[int, ...], layout: str, dims: int, gen: torch.Generator) -> torch.Tensor:
    """An input of ``shape`` (batched or not) in the given memory layout."""
    batched = len(shape) == dims + 2
    if layout == "contiguous":
        return torch.randn(shape, dtype=FP64, generator=gen)
    if layout == "channels_last":  # .to(memory_format=...) for batched 2-d / 3-d inputs
        fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
        return torch.randn(shape, dtype=FP64, generator=gen).to(memory_format=fmt)
    if layout == "channels_innermost":  # 1-d (B, L, C).transpose(1, 2), and the like for unbatched inputs
        c = 1 if batched else 0
        perm_shape = shape[:c] + shape[c + 1 :] + (shape[c],)
        return torch.randn(perm_shape, dtype=FP64, generator=gen).movedim(-1, c)
    if layout == "sliced":  # a non-contiguous view: every spatial dim is a window of a larger tensor
        big = torch.randn(shape[: len(shape) - dims] + tuple(s + 2 for s in shape[-dims:]), dtype=FP64, generator=gen)
        return big[(...,) + tuple(slice(1, s + 1) for s in shape[-dims:])]
    raise AssertionError(layout)


@st.composite
def conv_cases(draw: st.DrawFn) -> Case:
    dims = draw(st.sampled_from([1, 2, 3]))
    batch = draw(st.sampled_from([None, 1, 2, 3]))
    channels = draw(st.integers(1, 4))
    out_channels = draw(st.integers(1, 5))
    kernel, sizes = [], []
    for _ in range(dims):
        kind = draw(st.sampled_from(["pointwise", "patch", "whole input"]))
        if kind == "pointwise":
            k = 1
            size = draw(st.integers(1, 7))
        elif kind == "patch":  # sizes that are NOT multiples of the kernel are drawn as often as those that are
            k = draw(st.integers(2, 4))
            size = k * draw(st.integers(1, 3)) + draw(st.integers(0, k - 1))
        else:
            k = draw(st.integers(1, 6))
            size = k
        kernel.append(k)
        sizes.append(size)
    layouts = ["contiguous", "sliced", "channels_innermost"]
    if batch is not None and dims > 1:
        layouts.append("channels_last")
    layout = draw(st.sampled_from(layouts))
    weight_channels_last = dims > 1 and draw(st.booleans())
    bias = draw(st.booleans())
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    shape = ((batch,) if batch is not None else ()) + (channels, *sizes)
    x = _layout_input(shape, layout, dims, gen)
    w = torch.randn(out_channels, channels, *kernel, dtype=FP64, generator=gen)
    if weight_channels_last:
        w = w.to(memory_format=torch.channels_last if dims == 2 else torch.channels_last_3d)
    b = torch.randn(out_channels, dtype=FP64, generator=gen) if bias else None
    return Case(x, w, b, layout + (", weight channels_last" if weight_channels_last else ""))


def _assert_free_view(y: torch.Tensor, batched: bool) -> None:
    """The free layout: (B, O, o..) is a view of the GEMM's (B, o.., O) output; flatten(2).transpose(1, 2) is free."""
    channel_dim = 1 if batched else 0
    assert y.movedim(channel_dim, -1).is_contiguous()
    if batched:
        tokens = y.flatten(2).transpose(1, 2)
        assert tokens.is_contiguous() and tokens.data_ptr() == y.data_ptr()


@settings(max_examples=300, **SETTINGS)
@given(case=conv_cases(), contiguous_output=st.booleans())
def test_patchify_conv_equals_fp64_conv_for_drawn_configs(case: Case, contiguous_output: bool) -> None:
    want = reference_conv(case.x, case.w, case.b)
    got = patchify_conv(case.x, case.w, case.b, contiguous_output=contiguous_output)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert max_abs_diff(got, want) <= TOL
    if contiguous_output:
        assert got.is_contiguous()
    else:
        _assert_free_view(got, case.batched)


@settings(max_examples=200, **SETTINGS)
@given(case=conv_cases())
def test_patchify_conv_like_conv_returns_the_conv_values_and_strides(case: Case) -> None:
    want = reference_conv(case.x, case.w, case.b)
    got = patchify_conv_like_conv(case.x, case.w, case.b)
    assert got.shape == want.shape
    assert max_abs_diff(got, want) <= TOL
    assert got.stride() == want.stride(), f"{case.layout}: {got.stride()} != conv {want.stride()}"


@settings(max_examples=80, **SETTINGS)
@given(case=conv_cases(), variant=st.sampled_from(["free view", "contiguous", "like conv"]))
def test_input_weight_and_bias_gradients_equal_the_conv_gradients(case: Case, variant: str) -> None:
    leaves = [t.detach().requires_grad_() for t in (case.x, case.w) + ((case.b,) if case.b is not None else ())]
    x, w, b = leaves[0], leaves[1], leaves[2] if len(leaves) == 3 else None
    want = reference_conv(x, w, b)
    if variant == "like conv":
        got = patchify_conv_like_conv(x, w, b)
    else:
        got = patchify_conv(x, w, b, contiguous_output=variant == "contiguous")
    upstream = torch.randn(want.shape, dtype=FP64)
    want_grads = torch.autograd.grad(want, leaves, upstream)
    got_grads = torch.autograd.grad(got, leaves, upstream)
    for name, g, r in zip(("input", "weight", "bias"), got_grads, want_grads):
        assert g.shape == r.shape, name
        assert max_abs_diff(g, r) <= TOL, name


# Real shapes of DESIGN.md section 6; output channels scaled down so the fp64 CPU conv stays fast.
REAL_SHAPES = {
    # Wan 1.3B 480p 81 frames: latent (1, 16, 21, 60, 104), Conv3d(16 -> 1536, (1, 2, 2)).
    "wan-480p": ((1, 16, 21, 60, 104), (24, 16, 1, 2, 2), True, "contiguous"),
    "wan-480p-channels-last-3d": ((1, 16, 21, 60, 104), (24, 16, 1, 2, 2), True, "channels_last"),
    # Qwen2.5-VL PatchEmbed: (N, 3, 2, 14, 14) patches, Conv3d(3 -> 1280, (2, 14, 14), bias=False): kernel == input.
    "qwen2.5-vl": ((64, 3, 2, 14, 14), (32, 3, 2, 14, 14), False, "contiguous"),
    # VideoMAE-B 16 frames 224px, Conv3d(3 -> 768, (2, 16, 16)); batch 8 -> 1.
    "videomae": ((1, 3, 16, 224, 224), (16, 3, 2, 16, 16), True, "contiguous"),
    # CLIP-L/14 336px, Conv2d(3 -> 1024, 14, bias=False).
    "clip-l-14-336": ((2, 3, 336, 336), (16, 3, 14, 14), False, "contiguous"),
    # SigLIP so400m 384px / 14: 384 = 27 * 14 + 6, the last 6 rows and columns are cropped.
    "siglip-384-14-crop": ((2, 3, 384, 384), (16, 3, 14, 14), True, "contiguous"),
    # wav2vec2 feature-extractor layer, Conv1d(512 -> 512, k=2, s=2), 20 s: L = 3999 (odd: crop); channels 512 -> 64.
    "wav2vec2-conv1d-crop": ((2, 64, 3999), (64, 64, 2), False, "contiguous"),
    "wav2vec2-conv1d-crop-channels-innermost": ((2, 64, 3999), (64, 64, 2), False, "channels_innermost"),
    # HunyuanVideo 1.5 embed: pointwise Conv3d(65 -> 2048, 1) on (1, 65, 31, 45, 80); frames 31 -> 3.
    "hunyuanvideo-1.5-pointwise": ((1, 65, 3, 45, 80), (32, 65, 1, 1, 1), True, "contiguous"),
    # DiT-XL 512px latent, Conv2d(4 -> 1152, 2).
    "dit-xl-512": ((8, 4, 64, 64), (32, 4, 2, 2), True, "contiguous"),
}


@pytest.mark.parametrize("name", REAL_SHAPES)
def test_real_model_shapes_equal_fp64_conv(name: str) -> None:
    x_shape, w_shape, bias, layout = REAL_SHAPES[name]
    gen = torch.Generator().manual_seed(0)
    dims = len(w_shape) - 2
    x = _layout_input(x_shape, layout, dims, gen)
    w = torch.randn(w_shape, dtype=FP64, generator=gen)
    b = torch.randn(w_shape[0], dtype=FP64, generator=gen) if bias else None
    want = reference_conv(x, w, b)

    free = patchify_conv(x, w, b)
    assert free.shape == want.shape and max_abs_diff(free, want) <= TOL
    _assert_free_view(free, batched=True)

    contiguous = patchify_conv(x, w, b, contiguous_output=True)
    assert contiguous.is_contiguous() and max_abs_diff(contiguous, want) <= TOL

    like = patchify_conv_like_conv(x, w, b)
    assert like.stride() == want.stride() and max_abs_diff(like, want) <= TOL


@pytest.mark.parametrize("contiguous_output", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_empty_batch_gives_the_conv_empty_output(contiguous_output: bool, bias: bool) -> None:
    x = torch.randn(0, 3, 5, 7, dtype=FP64)
    w = torch.randn(4, 3, 2, 2, dtype=FP64)
    b = torch.randn(4, dtype=FP64) if bias else None
    want = reference_conv(x, w, b)
    got = patchify_conv(x, w, b, contiguous_output=contiguous_output)
    assert got.shape == want.shape == (0, 4, 2, 3)


def test_unbatched_input_is_the_batched_result_squeezed() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 9, 10, dtype=FP64, generator=gen)
    w = torch.randn(5, 3, 2, 3, dtype=FP64, generator=gen)
    want = reference_conv(x, w, None)
    assert want.shape == (5, 4, 3)
    for got in (patchify_conv(x, w), patchify_conv(x, w, contiguous_output=True), patchify_conv_like_conv(x, w)):
        assert got.shape == want.shape
        assert torch.equal(got, patchify_conv(x.unsqueeze(0), w, contiguous_output=got.is_contiguous()).squeeze(0))
        assert max_abs_diff(got, want) <= TOL
