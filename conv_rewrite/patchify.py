"""The patchify-conv math: a convolution whose stride equals its kernel as reshape + permute + one GEMM.

Pure torch with no FX in it, so Dynamo, make_fx and torch.export trace it and symbolic sizes flow through.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def patchify_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    contiguous_output: bool = False,
    padding: Sequence[int] = (),
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Return ``convNd(x, weight, bias, stride=kernel, padding=padding)`` computed as one matrix multiply.

    ``x`` is (B, C, S1..SN) or unbatched (C, S1..SN), ``weight`` is (O, C, k1..kN) with N = 1, 2 or 3. Each output
    size is S_i // k_i and the trailing S_i % k_i elements are never read, exactly as in the conv. The patch matrix
    is (B*L, C*k1*..*kN) with L = o1*..*oN.

    ``contiguous_output=False`` multiplies patches by weight.T and returns (B, O, o1..oN) as a free view of the
    (B, o1..oN, O) result: channels-last, which a consumer such as ``.flatten(2).transpose(1, 2)`` reads for free.
    ``contiguous_output=True`` multiplies weight by the transposed patches instead, so the GEMM itself writes the
    contiguous layout a conv returns for a contiguous input, without a copy of the output.

    ``padding`` (one int per spatial dim) pads both ends first, with zeros or as ``padding_mode`` ("reflect",
    "replicate", "circular") says: what nn.ConvNd.forward does, so the result is the padded conv's exactly.
    """
    n = weight.dim() - 2
    if x.dim() == n + 1:
        return patchify_conv(
            x.unsqueeze(0),
            weight,
            bias,
            contiguous_output=contiguous_output,
            padding=padding,
            padding_mode=padding_mode,
        ).squeeze(0)
    if any(padding):
        pads = [p for size in reversed(padding) for p in (size, size)]
        x = F.pad(x, pads, mode="constant" if padding_mode == "zeros" else padding_mode)
    kernel = weight.shape[2:]
    batch, channels = x.shape[0], x.shape[1]
    out_sizes = [x.shape[2 + i] // kernel[i] for i in range(n)]
    split_shape = [batch, channels]
    for i in range(n):
        x = x.narrow(2 + i, 0, out_sizes[i] * kernel[i])
        split_shape += [out_sizes[i], kernel[i]]
    x = x.view(split_shape)
    out_dims = [2 + 2 * i for i in range(n)]
    kernel_dims = [3 + 2 * i for i in range(n)]
    w = weight.reshape(weight.shape[0], -1)
    if contiguous_output:
        patches = x.permute(0, 1, *kernel_dims, *out_dims).reshape(batch, w.shape[1], math.prod(out_sizes))
        if bias is None:
            y = torch.matmul(w, patches)
        else:
            y = torch.baddbmm(bias.view(1, -1, 1).expand(batch, -1, patches.shape[2]), w.expand(batch, -1, -1), patches)
        return y.view(batch, w.shape[0], *out_sizes)
    rows = x.permute(0, *out_dims, 1, *kernel_dims).reshape(-1, w.shape[1])
    y = F.linear(rows, w, bias).view(batch, *out_sizes, w.shape[0])
    return y.permute(0, n + 1, *range(1, n + 1))


def patchify_conv_like_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``patchify_conv`` with the output strides the conv itself would return for these inputs.

    For graphs and modules that record no layout information: the layout is chosen at run time, the way ATen
    chooses it for the conv (contiguous, or channels-last for channels-last inputs).
    """
    from ._torch_private import conv_returns_channels_last

    if x.dim() == weight.dim() - 1:
        return patchify_conv_like_conv(x.unsqueeze(0), weight, bias).squeeze(0)
    return patchify_conv(x, weight, bias, contiguous_output=not conv_returns_channels_last(x, weight, bias))


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
