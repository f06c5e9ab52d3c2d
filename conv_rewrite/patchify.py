"""The patchify-conv math: a convolution whose stride equals its kernel as reshape + permute + one GEMM.

Pure torch with no FX in it, so Dynamo, make_fx and torch.export trace it and symbolic sizes flow through.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ._torch_private import (
    autotune_custom_op,
    conv_returns_channels_last,
    forward_ad_or_functorch,
    proxy_tracing,
    size_oblivious,
    static_sizes,
    unsafe_view,
)


def patchify_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    contiguous_output: bool = False,
    padding: int | Sequence[int] = (),
    padding_mode: str = "zeros",
    autotune: bool = False,
) -> torch.Tensor:
    """Return ``convNd(x, weight, bias, stride=kernel, padding=padding)`` computed as one matrix multiply.

    ``x`` is (B, C, S1..SN) or unbatched (C, S1..SN), ``weight`` is (O, C, k1..kN) with N = 1, 2 or 3. Each output
    size is S_i // k_i and the trailing S_i % k_i elements are never read, exactly as in the conv. The patch matrix
    is (B*L, C*k1*..*kN) with L = o1*..*oN.

    ``contiguous_output=False`` multiplies patches by weight.T and returns (B, O, o1..oN) as a free view of the
    (B, o1..oN, O) result: channels-last, which a consumer such as ``.flatten(2).transpose(1, 2)`` reads for free.
    ``contiguous_output=True`` returns exactly the strides a conv returns for a contiguous input, computed in the
    form ``contiguous_form`` chooses.

    ``padding`` (an int, or one per spatial dim) pads both ends first, with zeros or as ``padding_mode`` ("reflect",
    "replicate", "circular") says: what nn.ConvNd.forward does, so the result is the padded conv's exactly.
    """
    n = _check_operands(x, weight, bias)
    padding = _check_padding(padding, padding_mode, n)
    if x.dim() == n + 1:
        return patchify_conv(
            x.unsqueeze(0),
            weight,
            bias,
            contiguous_output=contiguous_output,
            padding=padding,
            padding_mode=padding_mode,
            autotune=autotune,
        ).squeeze(0)
    x = _pad(x, padding, padding_mode)
    out_sizes = [x.shape[2 + i] // weight.shape[2 + i] for i in range(n)]
    length = math.prod(out_sizes)
    patch = math.prod(weight.shape[1:])
    # A tracer's graph may reach Inductor, which pads GEMM buffers on CUDA; eager tensors meet no such compiler.
    traced = torch.compiler.is_compiling() or type(x) is not torch.Tensor
    form = contiguous_form(x.shape[0], length, patch, weight.shape[0], traced) if contiguous_output else FREE_VIEW
    if autotune and should_autotune(x, weight, form):
        return patch_conv(x, weight, bias)
    eager, plain = _eager(), plain_autograd()
    if plain and not torch.compiler.is_exporting() and form in _FOLDED:
        # torch.func and forward-mode AD differentiate the ops themselves: the folded weight's gradient would be a
        # slice of the folded matrix (strides other than the conv's); a pointwise op adds the bias instead
        form = _FOLDED[form]
    reverse = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    if reverse and not plain:
        if eager:
            return _PatchGemm.apply(x, weight, bias, form, True)
        y = _PatchGemm.apply(x, weight, bias, form, False)
        return _as_output(y, x.shape, weight, form) if form == FREE_VIEW else y
    y = _patch_gemm(x, weight, bias, form)
    # where no derivative flows, detach(): the same tensor, not a view (the conv's output is none: in-place ops after
    # no_grad and detach_() on it must work)
    return y.detach() if eager and not reverse and not plain else y


def _patch_rows(x: torch.Tensor, kernel: Sequence[Any]) -> torch.Tensor:
    """The patch matrix (B, L, C*k1*..*kN) of ``x`` (B, C, S1..SN); the trailing S_i % k_i elements are dropped."""
    if not static_sizes((*x.shape, *x.stride())):
        return _symbolic_patch_rows(x, kernel)
    n = len(kernel)
    batch, channels = x.shape[0], x.shape[1]
    out_sizes = [x.shape[2 + i] // kernel[i] for i in range(n)]
    split_shape = [batch, channels]
    for i in range(n):
        x = x.narrow(2 + i, 0, out_sizes[i] * kernel[i])
        split_shape += [out_sizes[i], kernel[i]]
    x = x.view(split_shape)  # (B, C, o1, k1, .., oN, kN)
    x = x.permute(0, *range(2, 2 + 2 * n, 2), 1, *range(3, 3 + 2 * n, 2))
    return x.reshape(batch, math.prod(out_sizes), channels * math.prod(kernel))


def _symbolic_patch_rows(x: torch.Tensor, kernel: Sequence[Any]) -> torch.Tensor:
    """``_patch_rows`` for symbolic sizes, with no guard. unfold computes the windows' sizes and strides by arithmetic
    alone (narrow + view would ask whether each size is a multiple of its kernel); a copy then a view of the copy
    decides nothing (reshape would ask whether it can view). Fake tensors still decide whether each view is
    contiguous (for a 1-d conv: whether L is a multiple of k): ``size_oblivious`` keeps that from becoming a guard,
    which would be a graph per parity, or an exported program that fails on every other length."""
    n = len(kernel)
    batch, channels = x.shape[0], x.shape[1]
    length = math.prod([x.shape[2 + i] // kernel[i] for i in range(n)])
    with size_oblivious():
        for i in range(n):
            x = x.unfold(2 + i, kernel[i], kernel[i])  # (B, C, o1, .., oN, k1, .., kN)
        x = x.permute(0, *range(2, 2 + n), 1, *range(2 + n, 2 + 2 * n))
        return x.clone(memory_format=torch.contiguous_format).view(batch, length, channels * math.prod(kernel))


def _unpatch_rows(
    grad_rows: torch.Tensor, x_shape: Sequence[Any], kernel: Sequence[Any], channels_last: bool = False
) -> torch.Tensor:
    """The gradient of ``x`` from that of its patch matrix: ``_patch_rows`` undone, zeros where nothing was read;
    written channels-last where ``channels_last`` (one copy either way)."""
    n = len(kernel)
    batch, channels = x_shape[0], x_shape[1]
    out_sizes = [x_shape[2 + i] // kernel[i] for i in range(n)]
    g = grad_rows.reshape(batch, *out_sizes, channels, *kernel)
    interleaved = [d for i in range(n) for d in (1 + i, n + 2 + i)]
    spatial = [o * k for o, k in zip(out_sizes, kernel)]
    if channels_last:
        g = g.permute(0, *interleaved, n + 1).reshape(batch, *spatial, channels).movedim(-1, 1)
    else:
        g = g.permute(0, n + 1, *interleaved).reshape(batch, channels, *spatial)
    crop = [p for i in reversed(range(n)) for p in (0, x_shape[2 + i] - out_sizes[i] * kernel[i])]
    return g if all(_known(c == 0) for c in crop) else F.pad(g, crop)


def _patch_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, form: str) -> torch.Tensor:
    """The conv of the (padded, batched) ``x`` as one GEMM over its patches, in the given form."""
    return _as_output(_gemm_result(x, weight, bias, form), x.shape, weight, form)


def _gemm_result(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, form: str) -> torch.Tensor:
    """The tensor the form computes, before the views that make it (B, O, o1..oN): (B*L, O) for the free view,
    (B, O) for the linear form, (B, O, L) (or (O, L) for one sample) for the weight-major forms, the output itself
    for free + copy."""
    n = weight.dim() - 2
    batch = x.shape[0]
    rows = _patch_rows(x, weight.shape[2:])
    w = weight.reshape(weight.shape[0], -1)
    if form == LINEAR_VIEW:
        return F.linear(rows.reshape(batch, w.shape[1]), w, bias)
    if form == WEIGHT_MM_ALL_ADD:
        y = torch.mm(w, rows.reshape(-1, w.shape[1]).transpose(0, 1))  # (O, B*L): one GEMM over every sample
        y = y.view(w.shape[0], batch, -1).transpose(0, 1)
        y = y + bias.view(-1, 1).to(y.dtype) if bias is not None else y
        # one pointwise pass (Inductor fuses the add into it) writes the contiguous output
        return y.clone(memory_format=torch.contiguous_format)
    if form in WEIGHT_FORMS:
        fold = form in (WEIGHT_MM, WEIGHT_BMM)
        if bias is not None and fold:
            rows, w = _fold_bias(rows, w, bias)
        if form in (WEIGHT_MM, WEIGHT_MM_ADD):
            y = torch.mm(w, rows[0].transpose(0, 1))
        else:
            y = torch.bmm(w.expand(batch, *w.shape), rows.transpose(1, 2))
        if not fold:  # a pointwise op writes the output: never a GEMM's buffer, which Inductor may pad
            y = y + bias.view(-1, 1).to(y.dtype) if bias is not None else y.clone(memory_format=torch.contiguous_format)
        return y
    y = F.linear(rows.reshape(-1, w.shape[1]), w, bias)
    if form == FREE_VIEW:
        return y
    del rows  # in eager, the patch matrix is freed before the copy below: the peak holds one of them, not both
    out_sizes = [x.shape[2 + i] // weight.shape[2 + i] for i in range(n)]
    y = y.view(batch, *out_sizes, w.shape[0]).permute(0, n + 1, *range(1, n + 1))
    # clone, not contiguous(): canonical strides for size-1 dims too (as the conv has them), and no size guards
    return y.clone(memory_format=torch.contiguous_format)


def _out_shape(x_shape: Sequence[Any], weight: torch.Tensor) -> list[Any]:
    """The conv's output sizes (B, O, o1..oN) for an ``x`` of sizes ``x_shape``."""
    return [x_shape[0], weight.shape[0], *[x_shape[2 + i] // weight.shape[2 + i] for i in range(weight.dim() - 2)]]


def _as_output(y: torch.Tensor, x_shape: Sequence[Any], weight: torch.Tensor, form: str) -> torch.Tensor:
    """``_gemm_result``'s tensor (or its gradient) viewed as the conv's (B, O, o1..oN) output of an ``x`` of sizes
    ``x_shape`` (no data moves)."""
    n = weight.dim() - 2
    shape = _out_shape(x_shape, weight)
    if form == FREE_VIEW:
        y = y if y.dim() == n + 2 else y.view(shape[0], *shape[2:], shape[1])
        return y.permute(0, n + 1, *range(1, n + 1))
    if form == FREE_CLONE:
        return y
    return y.view(shape)


def _weight_grad(grad: torch.Tensor, x: torch.Tensor, kernel: list[int], tokens_major: bool) -> torch.Tensor:
    """The gradient of the flattened weight (O, K): ``grad``^T @ the patches of ``x``, one GEMM whose reduction runs
    over every patch (fp32 accumulation, one rounding). ``grad`` is (B*L, O) when ``tokens_major``, else (B, O, L)."""
    rows = _patch_rows(x, kernel)
    rows = rows.reshape(-1, rows.shape[2])
    if tokens_major:
        return torch.mm(grad.t(), rows)
    return torch.mm(grad.transpose(0, 1).reshape(grad.shape[1], -1), rows)


@torch.library.custom_op("conv_rewrite::patch_weight_grad", mutates_args=())
def _patch_weight_grad(grad: torch.Tensor, x: torch.Tensor, kernel: list[int], tokens_major: bool) -> torch.Tensor:
    """``_weight_grad`` as one opaque op, so that under torch.compile the partitioner keeps ``x`` for the backward,
    as the conv does: were the patches rebuilt by plain ops, it would compute them in the forward and keep them, an
    input-sized copy (VideoMAE: 3x the conv's memory kept for the backward)."""
    return _weight_grad(grad, x, kernel, tokens_major)


@_patch_weight_grad.register_fake
def _(grad: torch.Tensor, x: torch.Tensor, kernel: list[int], tokens_major: bool) -> torch.Tensor:
    return grad.new_empty((grad.shape[1], x.shape[1] * math.prod(kernel)))


def _patch_weight_grad_setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    grad, x, kernel, tokens_major = inputs
    ctx.save_for_backward(grad, x)
    ctx.kernel, ctx.tokens_major = kernel, tokens_major


def _patch_weight_grad_backward(ctx: Any, grad_w: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    """Double backward (gradient penalties, Hessian-vector products): the weight gradient is bilinear in ``grad``
    and the patches of ``x``, so each gradient is one GEMM with ``grad_w``, in plain (again differentiable) ops."""
    grad, x = ctx.saved_tensors
    need_grad, need_x = ctx.needs_input_grad[:2]
    batch, channels = x.shape[0], grad_w.shape[1]
    d_grad = d_x = None
    if need_grad:
        rows = _patch_rows(x, ctx.kernel)  # (B, L, K)
        d_grad = torch.matmul(rows, grad_w.t())  # (B, L, O)
        d_grad = d_grad.reshape(grad.shape) if ctx.tokens_major else d_grad.transpose(1, 2)
    if need_x:
        g = grad if ctx.tokens_major else grad.transpose(1, 2).reshape(-1, grad.shape[1])  # (B*L, O)
        d_x = _unpatch_rows(torch.mm(g, grad_w).view(batch, -1, channels), x.shape, ctx.kernel)
    return d_grad, d_x, None, None


_patch_weight_grad.register_autograd(_patch_weight_grad_backward, setup_context=_patch_weight_grad_setup)


def _is_dtensor(*tensors: torch.Tensor) -> bool:
    """DTensor has no sharding rule for our op: its gradient is computed by plain ops (each with one)."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and any(isinstance(t, module.DTensor) for t in tensors)


def plain_autograd() -> bool:
    """Whether the plain ops' own derivative formulas serve, not the Function (which only saves memory in reverse
    mode): under torch.export, whose program autograd later differentiates op by op (strict export would trace the
    Function's forward under no_grad and drop its backward), and where forward-mode AD or a torch.func transform runs
    (the Function has no jvp: Dynamo cannot trace a Function with one)."""
    if torch.compiler.is_exporting():
        return True
    return not torch.compiler.is_dynamo_compiling() and forward_ad_or_functorch()


def _eager() -> bool:
    """Whether this runs eagerly: not in a torch.compile trace (Dynamo's, AOTAutograd's) nor a make_fx trace."""
    return not torch.compiler.is_compiling() and not proxy_tracing()


class _PatchGemm(torch.autograd.Function):
    """``_patch_gemm`` whose backward keeps ``x`` rather than the patch matrix, and rebuilds the patches when the
    weight's gradient needs them. The conv keeps its input for its backward too, so training holds no more memory
    than the conv: autograd would otherwise keep the patch matrix, an input-sized copy (VideoMAE: 3x the conv's).

    Its output is never a view made inside it: autograd forbids in-place ops on such views (the conv's output allows
    them). ``eager``: the output, detached (the same tensor, not a view). Traced: the GEMM's result as an
    ``_unsafe_view`` (a tensor of its own): the output itself for the contiguous forms, (B, o1..oN, O) for the free
    view, which the caller permutes. A detached output would cut the gradient of every alias of it a compiled graph
    returns (AOTAutograd rebuilds those from their base)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, form: str, eager: bool
    ) -> torch.Tensor:
        if eager:
            return _patch_gemm(x, weight, bias, form).detach()
        y = _gemm_result(x, weight, bias, form)
        if form == FREE_CLONE:
            return y
        shape = _out_shape(x.shape, weight)
        if form == FREE_VIEW:  # (B, o1..oN, O): the caller permutes it
            shape = [shape[0], *shape[2:], shape[1]]
        return unsafe_view(y, shape)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        x, weight, _, form, eager = inputs
        ctx.save_for_backward(x, weight)
        # sizes kept as values: read off a saved tensor in the backward, a data-dependent size (x[:n.item()]) makes
        # AOTAutograd's partitioner fail (torch 2.13)
        ctx.x_shape, ctx.form, ctx.eager = tuple(x.shape), form, eager
        # the conv's gradients take its output's layout: channels-last where a channels-last input gave one
        ctx.channels_last = form == FREE_VIEW and _channels_last_strided(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        if not ctx.eager and ctx.form == FREE_VIEW:  # the gradient of the GEMM's result, as the caller viewed it
            grad = _as_output(grad, ctx.x_shape, weight, ctx.form)
        grads = _patch_gemm_grads(grad, x, weight, needs, ctx.form in WEIGHT_FORMS, ctx.x_shape, ctx.channels_last)
        return (*grads, None, None)


def _patch_gemm_grads(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    needs: Sequence[bool],
    weight_major: bool,
    x_shape: Sequence[Any],
    channels_last: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The gradients of (x, weight, bias) where ``needs`` says, from the output's ``grad`` (or that of the GEMM's
    result) and the saved ``x`` (of sizes ``x_shape``) and ``weight``: the patches are rebuilt only for the weight's
    gradient. ``weight_major``: the GEMM wrote (B, O, L); ``channels_last``: the gradients of ``x`` and the weight are
    channels-last, as the conv's are where its output is. Under autocast the forward's GEMM ran in ``grad``'s dtype:
    so do these (autograd casts each gradient back to its input's dtype), as the conv's backward does."""
    need_x, need_w, need_b = needs
    batch, out_channels = x_shape[0], weight.shape[0]
    x, weight = x.to(grad.dtype), weight.to(grad.dtype)
    kernel = list(weight.shape[2:])
    w = weight.reshape(out_channels, -1)
    patch = w.shape[1]
    # every size from x_shape, none read off grad (its sizes may be other symbols, equal only at run time)
    length = math.prod([x_shape[2 + i] // k for i, k in enumerate(kernel)])
    # (B, O, L) as the weight-major forms wrote it; else (B*L, O), free of copies for the free view
    if weight_major:
        g = grad.reshape(batch, out_channels, length)
    else:
        g = grad.movedim(1, -1).reshape(batch * length, out_channels)
    grad_x = grad_w = grad_b = None
    if need_w:
        weight_grad = _weight_grad if _is_dtensor(g, x) else _patch_weight_grad
        grad_w = weight_grad(g, x, kernel, not weight_major).view(weight.shape)
        if channels_last:  # a copy of the (small) weight gradient
            grad_w = grad_w.contiguous(memory_format=_CHANNELS_LAST[weight.dim()])
    if need_b:
        grad_b = g.sum((0, 2)) if weight_major else g.sum(0)
    if need_x:
        rows = torch.matmul(w.t(), g).transpose(1, 2) if weight_major else torch.mm(g, w).view(batch, length, patch)
        grad_x = _unpatch_rows(rows, x_shape, kernel, channels_last)
    return grad_x, grad_w, grad_b


# The forms of the GEMM. FREE_VIEW is the channels-last view; the others return the contiguous layout.
FREE_VIEW, FREE_CLONE, LINEAR_VIEW = "free view", "free + copy", "linear"
WEIGHT_MM, WEIGHT_BMM = "weight @ rows^T", "batched weight @ rows^T"  # the bias folded into the GEMM
WEIGHT_MM_ADD, WEIGHT_BMM_ADD = "weight @ rows^T, + bias", "batched weight @ rows^T, + bias"  # a pointwise op writes
WEIGHT_MM_ALL_ADD = "weight @ every sample's rows^T, + bias"  # one 2-d GEMM, (O, B*L), permuted by the pointwise op
WEIGHT_FORMS = (WEIGHT_MM, WEIGHT_BMM, WEIGHT_MM_ADD, WEIGHT_BMM_ADD, WEIGHT_MM_ALL_ADD)
_FOLDED = {WEIGHT_MM: WEIGHT_MM_ADD, WEIGHT_BMM: WEIGHT_BMM_ADD}  # each bias-folding form and its "+ bias" twin


def contiguous_form(batch: Any, length: Any, patch: int, out_channels: int, padded_buffers: bool = True) -> str:
    """The fastest exact way to produce the contiguous (B, O, o1..oN) output, from sizes known when tracing.

    Measured on an H200 for 22 real shapes, forward and training (bench/NOTES.md, "forms"):
    - one output position per sample (L = 1: Qwen-VL, GLM-4V): the (B, O) GEMM result is already that layout
      (weight @ patches^T would be B matrix-vector products, 60-170x slower);
    - output larger than the patches (O > K: Wan, HunyuanVideo, SD3, DiT, CogVideoX): the GEMM writes the output
      itself as weight @ patches^T with the bias folded in, a 2-d GEMM for B = 1, a batched one otherwise;
    - elsewhere (VideoMAE, ViT, CLIP, V-JEPA, wav2vec2): the free form plus one copy of the smaller output.
    With ``padded_buffers`` (a traced graph, which Inductor may compile: it pads GEMM outputs on CUDA, and the padding
    would leak into the strides) a GEMM's output is handed out only where its rows are a multiple of 8 elements;
    otherwise a pointwise op (the bias, or a copy) writes the layout. Symbolic sizes count as neither 1 nor aligned:
    the choice adds no guard.
    """
    if _is_one(length) and (_is_multiple_of_8(out_channels) or not padded_buffers):
        return LINEAR_VIEW
    if out_channels > patch:
        fold = _is_multiple_of_8(length) or not padded_buffers
        if _is_one(batch):
            return WEIGHT_MM if fold else WEIGHT_MM_ADD
        return WEIGHT_BMM if fold else WEIGHT_BMM_ADD
    return FREE_CLONE


# The contiguous forms whose speed the sizes do not tell: measured on an H200, bmm + add took 0.119-0.180 ms across
# processes on CogVideoX's patch embedding where the conv took 0.132 and linear + copy 0.140 (bench/NOTES.md).
MEASURED_FORMS = (WEIGHT_MM_ADD, WEIGHT_BMM_ADD)
# Where Inductor measures them; elsewhere the static choice stays (the CPU's forms were never seen to vary).
AUTOTUNED_DEVICES = ("cuda",)


def should_autotune(x: torch.Tensor, weight: torch.Tensor, form: str) -> bool:
    """Whether the exact ``form`` should be left to Inductor's autotuning, against the conv and the other exact form:
    the one ``contiguous_form`` chose is not reliably faster than the conv, on a device where that was measured.
    Not for DTensors (the op has no sharding rule), nor for symbolic sizes: Inductor's autotuning would not time the
    candidates there and would run the conv for every size.
    An exported program keeps plain ATen ops (loadable where this library is not installed); under autocast the
    static form runs (the op has no autocast rule, and autocast's dtype is the caller's choice).
    """
    static = static_sizes(x.shape)
    measured = form in MEASURED_FORMS and x.device.type in AUTOTUNED_DEVICES
    plain = not torch.compiler.is_exporting() and not torch.is_autocast_enabled(x.device.type)
    return measured and static and plain and not _is_dtensor(x, weight)


_CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@torch.library.custom_op("conv_rewrite::patch_conv", mutates_args=())
def patch_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``convNd(x, weight, bias, stride=kernel)`` of a batched, already padded ``x``, with contiguous strides: one op
    that Inductor lowers to the fastest of the conv itself and ``AUTOTUNED_FORMS`` (``register_autotuning``)."""
    y = _CONVS[weight.dim() - 2](x, weight, bias, stride=tuple(weight.shape[2:]))
    # canonical contiguous strides, size-1 dims included, as the fake and every decomposition give them
    strides = [math.prod(y.shape[d + 1 :]) for d in range(y.dim())]
    return y if list(y.stride()) == strides else y.clone(memory_format=torch.contiguous_format)


@patch_conv.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    # every graph that holds the op was traced through here, before Inductor lowers it; Dynamo runs fake kernels
    # without tracing them, so the registration adds no graph break to a compiled caller
    register_autotuning()
    return torch.empty(_out_shape(x.shape, weight), dtype=x.dtype, device=x.device)


def _patch_conv_setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight)  # as _PatchGemm: x, not the patches, is kept for the backward
    ctx.x_shape = tuple(x.shape)


def _patch_conv_backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    x, weight = ctx.saved_tensors
    return _patch_gemm_grads(grad, x, weight, ctx.needs_input_grad, True, ctx.x_shape)


patch_conv.register_autograd(_patch_conv_backward, setup_context=_patch_conv_setup)


def patch_conv_weight_gemm_add(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``patch_conv`` as weight @ patches^T (2-d for one sample, batched otherwise), then the bias added by a
    pointwise op that writes the contiguous output."""
    return _patch_gemm(x, weight, bias, WEIGHT_MM_ADD if _is_one(x.shape[0]) else WEIGHT_BMM_ADD)


def patch_conv_weight_mm_over_samples_add(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``patch_conv`` as one 2-d GEMM of the weight with the patches of every sample, (O, B*L), then the bias added by
    the pointwise op that permutes it into the contiguous output (H200, CogVideoX: 0.106 ms where bmm + add took
    0.120, bench/NOTES.md)."""
    return _patch_gemm(x, weight, bias, WEIGHT_MM_ALL_ADD)


def patch_conv_linear_copy(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``patch_conv`` as patches @ weight^T + bias (one linear), then one copy into the contiguous layout."""
    return _patch_gemm(x, weight, bias, FREE_CLONE)


# The exact forms Inductor times against the conv (``patch_conv``'s own implementation, its fallback choice).
AUTOTUNED_FORMS = (patch_conv_weight_gemm_add, patch_conv_weight_mm_over_samples_add, patch_conv_linear_copy)


def register_autotuning() -> None:
    """Make Inductor lower ``patch_conv`` to the fastest of the conv and ``AUTOTUNED_FORMS``, timed at compile time
    (once per process; loads Inductor)."""
    autotune_custom_op(patch_conv, AUTOTUNED_FORMS)


def _known(condition: Any) -> bool:
    """Whether ``condition`` (on sizes) holds whatever values its symbolic sizes take, decided without a guard; also
    while Dynamo traces, where a symbolic size passes for an int (``statically_known_true`` sees through that)."""
    if not torch.compiler.is_dynamo_compiling() and isinstance(condition, bool):
        return condition
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    return statically_known_true(condition)


def _is_multiple_of_8(size: Any) -> bool:
    return _known(size % 8 == 0)


_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def _channels_last_strided(x: torch.Tensor) -> bool:
    """Whether a 4-d or 5-d ``x`` of static sizes has channels-last strides (and not contiguous ones too)."""
    fmt = _CHANNELS_LAST.get(x.dim())
    if fmt is None or not static_sizes((*x.shape, *x.stride())):
        return False
    return x.is_contiguous(memory_format=fmt) and not x.is_contiguous()


def _is_one(size: Any) -> bool:
    return _known(size == 1)


def _shape_error(message: str) -> ValueError:
    return ValueError(f"patchify_conv: {message}")


def _check_operands(x: Any, weight: Any, bias: Any) -> int:
    """The number of spatial dims; a ValueError/TypeError naming the argument when the conv itself would refuse.

    Only concrete sizes are compared: a symbolic size is never turned into a guard here.
    """
    for name, value in (("x", x), ("weight", weight)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"patchify_conv: {name} must be a torch.Tensor, got {type(value).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(f"patchify_conv: bias must be a torch.Tensor or None, got {type(bias).__name__}")
    n = weight.dim() - 2
    if n not in (1, 2, 3):
        raise _shape_error(f"weight must be (O, C, k1..kN) with N = 1, 2 or 3, got shape {tuple(weight.shape)}")
    if x.dim() not in (n + 1, n + 2):
        raise _shape_error(
            f"x must be (B, C, S1..S{n}) or unbatched (C, S1..S{n}) for a {n}-d weight, got shape {tuple(x.shape)}"
        )
    channels = x.shape[0 if x.dim() == n + 1 else 1]
    if _known(channels != weight.shape[1]):
        raise _shape_error(
            f"x has {channels} channels but weight {tuple(weight.shape)} expects {weight.shape[1]} (dim 1)"
        )
    if bias is not None and (bias.dim() != 1 or _known(bias.shape[0] != weight.shape[0])):
        raise _shape_error(
            f"bias must be ({weight.shape[0]},) for weight {tuple(weight.shape)}, got {tuple(bias.shape)}"
        )
    for name, value in (("weight", weight), ("bias", bias)):
        if value is not None and value.dtype != x.dtype:
            raise TypeError(f"patchify_conv: {name} has dtype {value.dtype} but x has {x.dtype}; they must match")
    return n


def _check_padding(padding: Any, padding_mode: str, n: int) -> tuple[int, ...]:
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"patchify_conv: unknown padding_mode {padding_mode!r}; valid: {', '.join(PADDING_MODES)}")
    if isinstance(padding, int):
        return (padding,) * n
    try:
        values = tuple(padding)
    except TypeError:
        raise TypeError(f"patchify_conv: padding must be an int or a sequence of {n} ints, got {padding!r}") from None
    if len(values) == 1:
        return values * n  # as ATen broadcasts a 1-element padding
    if values and len(values) != n:
        raise _shape_error(f"padding must have one entry per spatial dim ({n}), got {padding!r}")
    if not all(isinstance(v, int) for v in values):
        raise TypeError(f"patchify_conv: padding must hold ints, got {padding!r}")
    return values


PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _fold_bias(rows: torch.Tensor, w: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Append a column of ones to the patches and the bias to the weight, so the GEMM adds the bias itself.

    Zero columns pad K+1 to a multiple of 8, which cuBLAS needs for its fast bf16 kernels; the copy of the patches
    is made anyway, so the extra columns cost no extra pass.
    """
    extra = -(w.shape[1] + 1) % 8
    batch, length = rows.shape[0], rows.shape[1]
    ones = rows.new_ones(()).expand(batch, length, 1)
    rows = torch.cat([rows, ones, rows.new_zeros(()).expand(batch, length, extra)], 2)
    w = torch.cat([w, bias.view(-1, 1), w.new_zeros(()).expand(w.shape[0], extra)], 1)
    return rows, w


def _pad(x: torch.Tensor, padding: Sequence[int], padding_mode: str) -> torch.Tensor:
    """Pad both ends of each spatial dim as nn.ConvNd.forward does: F.pad for any padding_mode but zeros."""
    if padding_mode == "zeros" and not any(padding):
        return x
    pads = [p for size in reversed(padding) for p in (size, size)]
    return F.pad(x, pads, mode="constant" if padding_mode == "zeros" else padding_mode)


def patchify_conv_like_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    padding: Sequence[int] = (),
    padding_mode: str = "zeros",
    autotune: bool = False,
) -> torch.Tensor:
    """``patchify_conv`` with the output strides the conv itself would return for these inputs.

    For graphs and modules that record no layout information: the layout is chosen at run time, on the padded
    input, the way ATen chooses it for the conv (contiguous, or channels-last for channels-last inputs).
    """
    if x.dim() == weight.dim() - 1:
        return patchify_conv_like_conv(
            x.unsqueeze(0), weight, bias, padding=padding, padding_mode=padding_mode, autotune=autotune
        ).squeeze(0)
    x = _pad(x, _check_padding(padding, padding_mode, weight.dim() - 2), padding_mode)
    if not conv_returns_channels_last(x, weight, bias, False):
        return patchify_conv(x, weight, bias, contiguous_output=True, autotune=autotune)
    if not _eager() and any(_is_one(size) for size in _out_shape(x.shape, weight)):
        # a traced graph may return the result: AOTAutograd restrides the size-1 dims of a returned view
        return patchify_conv_channels_last(x, weight, bias)
    return patchify_conv(x, weight, bias)


def patchify_conv_channels_last(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    padding: Sequence[int] = (),
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """``patchify_conv``'s channels-last result as a tensor of its own rather than a view of the GEMM's output.

    Its strides are ATen's channels-last strides exactly, size-1 dims included, also where AOTAutograd regenerates
    a graph output that is a view of an intermediate (it restrides size-1 dims there).
    """
    y = patchify_conv(x, weight, bias, padding=padding, padding_mode=padding_mode)
    order = [0, *range(2, y.dim()), 1]
    strides = [0] * y.dim()
    step = 1
    for d in reversed(order):
        strides[d] = step
        step = step * y.shape[d]
    return y.new_empty_strided(y.shape, strides).copy_(y)  # new_: a DTensor's result stays one


def unpatchify_conv_transpose_like_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    padding: Sequence[int] = (),
    output_padding: Sequence[int] = (),
) -> torch.Tensor:
    """``unpatchify_conv_transpose`` with the output strides the transposed conv would return for these inputs."""
    if x.dim() == weight.dim() - 1:
        return unpatchify_conv_transpose_like_conv(
            x.unsqueeze(0), weight, bias, padding=padding, output_padding=output_padding
        ).squeeze(0)
    y = unpatchify_conv_transpose(x, weight, bias, padding=padding, output_padding=output_padding)
    if conv_returns_channels_last(x, weight, bias, True):
        return y.movedim(1, -1).contiguous().movedim(-1, 1)  # ATen's channels-last strides, size-1 dims included
    return y


def unpatchify_conv_transpose(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    padding: Sequence[int] = (),
    output_padding: Sequence[int] = (),
) -> torch.Tensor:
    """Return ``conv_transposeNd(x, weight, bias, stride=kernel, padding, output_padding)`` as one matrix multiply.

    ``x`` is (B, C, o1..oN) or unbatched, ``weight`` is (C, O, k1..kN). Every input position writes its own k1..kN
    block of the output: the GEMM (B*o1*..*oN, C) x (C, O*k1*..*kN) and a permute give the full (B, O, o1*k1, ..)
    result. ``output_padding`` appends positions that receive only the bias, ``padding`` crops that many at each end.
    The result is contiguous.
    """
    n = weight.dim() - 2
    if x.dim() == n + 1:
        return unpatchify_conv_transpose(
            x.unsqueeze(0), weight, bias, padding=padding, output_padding=output_padding
        ).squeeze(0)
    padding = list(padding) or [0] * n
    output_padding = list(output_padding) or [0] * n
    batch, channels, out_channels = x.shape[0], x.shape[1], weight.shape[1]
    in_sizes, kernel = x.shape[2:], weight.shape[2:]
    rows = x.permute(0, *range(2, n + 2), 1).reshape(-1, channels)
    plain = not any(padding) and not any(output_padding)
    fused_bias = bias.repeat_interleave(math.prod(kernel)) if bias is not None and plain else None
    w = weight.reshape(channels, -1)
    y = torch.matmul(rows, w) if fused_bias is None else torch.addmm(fused_bias, rows, w)
    y = y.view(batch, *in_sizes, out_channels, *kernel)
    interleaved = [d for i in range(n) for d in (1 + i, n + 2 + i)]
    y = y.permute(0, n + 1, *interleaved).reshape(batch, out_channels, *(o * k for o, k in zip(in_sizes, kernel)))
    if any(output_padding):
        y = F.pad(y, [p for extra in reversed(output_padding) for p in (0, extra)])
    for i in range(n):
        if padding[i]:
            y = y.narrow(2 + i, padding[i], y.shape[2 + i] - 2 * padding[i])
    if bias is not None and fused_bias is None:
        y = y + bias.view(-1, *([1] * n))
    return y.contiguous()
