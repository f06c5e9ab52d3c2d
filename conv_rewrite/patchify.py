"""The patchify-conv math: a convolution whose stride equals its kernel as reshape + permute + one GEMM.

Pure torch with no FX in it, so Dynamo, make_fx and torch.export trace it and symbolic sizes flow through.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def patchify_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    contiguous_output: bool = False,
) -> torch.Tensor:
    """Return ``convNd(x, weight, bias, stride=kernel)`` computed as one matrix multiply.

    ``x`` is (B, C, S1..SN) or unbatched (C, S1..SN), ``weight`` is (O, C, k1..kN) with N = 1, 2 or 3. Each output
    size is S_i // k_i and the trailing S_i % k_i elements are never read, exactly as in the conv. The patch matrix
    is (B*L, C*k1*..*kN) with L = o1*..*oN.

    ``contiguous_output=False`` multiplies patches by weight.T and returns (B, O, o1..oN) as a free view of the
    (B, o1..oN, O) result: channels-last, which a consumer such as ``.flatten(2).transpose(1, 2)`` reads for free.
    ``contiguous_output=True`` multiplies weight by the transposed patches instead, so the GEMM itself writes the
    contiguous layout a conv returns for a contiguous input, without a copy of the output.
    """
    n = weight.dim() - 2
    if x.dim() == n + 1:
        return patchify_conv(x.unsqueeze(0), weight, bias, contiguous_output=contiguous_output).squeeze(0)
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
