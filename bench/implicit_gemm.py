"""A Triton implicit-patchify GEMM (an experiment of bench/gap.py): the GEMM reads its A tiles straight from the
conv input, so no permuted copy of the input is ever written. Forward only; CUDA; contiguous input.

Row m of A is patch (b, ot, oh, ow), column k is (c, it, ih, iw): the address is row_offset(m) + col_offset(k),
both computed in the kernel so that Triton sees the KW contiguous elements of each patch row.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
    for bm, bn, bk, w, s in (
        (128, 128, 64, 8, 3),
        (128, 256, 64, 8, 3),
        (256, 128, 64, 8, 3),
        (128, 64, 64, 4, 4),
    )
]


@triton.autotune(configs=_CONFIGS, key=["M", "N", "K", "KT", "KH", "KW"])
@triton.jit
def _patchify_gemm(
    x_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    M,
    N,
    K,
    OT,
    OH,
    OW,
    s_b,
    s_c,
    s_t,
    s_h,
    KT: tl.constexpr,
    KH: tl.constexpr,
    KW: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % size_m
    pid_n = (pid % group) // size_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m = tl.where(offs_m < M, offs_m, 0)
    n = tl.where(offs_n < N, offs_n, 0)
    ow = m % OW
    rest = m // OW
    oh = rest % OH
    rest = rest // OH
    ot = rest % OT
    b = rest // OT
    row = b * s_b + ot * (KT * s_t) + oh * (KH * s_h) + ow * KW
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        iw = k % KW
        q = k // KW
        ih = q % KH
        q = q // KH
        it = q % KT
        c = q // KT
        col = c * s_c + it * s_t + ih * s_h + iw
        a = tl.load(x_ptr + row[:, None] + col[None, :], mask=k[None, :] < K, other=0.0)
        w = tl.load(w_ptr + n[None, :] * K + k[:, None], mask=k[:, None] < K, other=0.0)
        acc = tl.dot(a, w, acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + n).to(tl.float32)[None, :]
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(y_ptr + offs_m[:, None] * N + offs_n[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)


def patchify_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """conv(x, weight, bias, stride=kernel) as (B, L, O) tokens, from one Triton kernel that reads x in place."""
    n = weight.dim() - 2
    kernel = (1,) * (3 - n) + tuple(weight.shape[2:])
    x5 = x.reshape(x.shape[:2] + (1,) * (3 - n) + tuple(x.shape[2:])).contiguous()
    assert x5.numel() < 2**31, "int32 offsets"
    outs = [s // k for s, k in zip(x5.shape[2:], kernel)]
    batch, out_channels = x5.shape[0], weight.shape[0]
    m, k = batch * math.prod(outs), weight[0].numel()
    w2 = weight.reshape(out_channels, k).contiguous()
    y = torch.empty(m, out_channels, device=x.device, dtype=x.dtype)
    s_b, s_c, s_t, s_h, _ = x5.stride()

    def grid(meta: dict[str, int]) -> tuple[int]:
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(out_channels, meta["BLOCK_N"]),)

    _patchify_gemm[grid](
        x5,
        w2,
        bias if bias is not None else w2,
        y,
        m,
        out_channels,
        k,
        *outs,
        s_b,
        s_c,
        s_t,
        s_h,
        KT=kernel[0],
        KH=kernel[1],
        KW=kernel[2],
        HAS_BIAS=bias is not None,
    )
    return y.view(batch, -1, out_channels)
