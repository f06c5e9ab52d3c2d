"""Model level: three real architectures that carry a patchify conv, written in plain torch, with random weights.

Each is the patch embedding plus two transformer blocks (and the model's own head), sized as the real model:
a Wan-style video DiT, a Qwen2.5-VL-style vision tower, a VideoMAE-B encoder. Not faithful in every detail (no
rotary embeddings; Qwen's window attention as fixed windows); faithful in the shapes and the kinds of layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention (self, or cross to ``context``) through scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int, qk_norm: bool = False, context_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = nn.RMSNorm(dim) if qk_norm else nn.Identity()
        self.norm_k = nn.RMSNorm(dim) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, dim = x.shape
        k, v = self.kv(x if context is None else context).chunk(2, dim=-1)
        q, k = self.norm_q(self.q(x)), self.norm_k(k)
        q, k, v = (t.reshape(batch, -1, self.heads, dim // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(batch, length, dim))


class MLP(nn.Module):
    """GELU MLP, or SwiGLU (gate * up) as in Qwen's vision tower."""

    def __init__(self, dim: int, hidden: int, gated: bool):
        super().__init__()
        self.gated = gated
        self.up = nn.Linear(dim, hidden)
        self.gate = nn.Linear(dim, hidden) if gated else None
        self.down = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        return self.down(F.gelu(self.up(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-norm transformer block; optional cross-attention and adaLN modulation (shift, scale, gate) as in DiTs."""

    def __init__(
        self,
        dim: int,
        heads: int,
        hidden: int,
        *,
        rms: bool = False,
        gated: bool = False,
        qk_norm: bool = False,
        cross: bool = False,
        modulated: bool = False,
    ):
        super().__init__()
        norm: Callable[[], nn.Module] = (
            (lambda: nn.RMSNorm(dim)) if rms else (lambda: nn.LayerNorm(dim, elementwise_affine=not modulated))
        )
        self.norm1, self.norm2 = norm(), norm()
        self.attn = Attention(dim, heads, qk_norm)
        self.cross = Attention(dim, heads, qk_norm) if cross else None
        self.norm_cross = nn.LayerNorm(dim) if cross else None
        self.mlp = MLP(dim, hidden, gated)
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5) if modulated else None

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, mod: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.modulation is not None and mod is not None:
            shift1, scale1, gate1, shift2, scale2, gate2 = (mod + self.modulation).unbind(1)
            x = x + gate1[:, None] * self.attn(self.norm1(x) * (1 + scale1[:, None]) + shift1[:, None])
        else:
            x = x + self.attn(self.norm1(x))
        if self.cross is not None and self.norm_cross is not None:
            x = x + self.cross(self.norm_cross(x), context)
        if self.modulation is not None and mod is not None:
            return x + gate2[:, None] * self.mlp(self.norm2(x) * (1 + scale2[:, None]) + shift2[:, None])
        return x + self.mlp(self.norm2(x))


def timestep_features(t: torch.Tensor, dim: int = 256) -> torch.Tensor:
    """Sinusoidal timestep features, (B,) -> (B, dim)."""
    freqs = torch.exp(-math.log(10000.0) * torch.arange(dim // 2, device=t.device, dtype=torch.float32) / (dim // 2))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


class WanStyleDiT(nn.Module):
    """Wan 2.1 1.3B-style: Conv3d(16->1536, (1,2,2)) patch embed, text and time conditioning, DiT blocks, unpatchify."""

    def __init__(self, dim: int = 1536, heads: int = 12, hidden: int = 8960, depth: int = 2, text_dim: int = 4096):
        super().__init__()
        self.patch = (1, 2, 2)
        self.patch_embedding = nn.Conv3d(16, dim, self.patch, stride=self.patch)
        self.text = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(
            Block(dim, heads, hidden, qk_norm=True, cross=True, modulated=True) for _ in range(depth)
        )
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False)
        self.head = nn.Linear(dim, 16 * math.prod(self.patch))

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = x.shape
        h = self.patch_embedding(x)
        grid = h.shape[2:]
        tokens = h.flatten(2).transpose(1, 2)
        emb = self.time(timestep_features(t).to(x.dtype))
        mod = self.time_mod(emb).unflatten(1, (6, -1))
        ctx = self.text(context)
        for block in self.blocks:
            tokens = block(tokens, ctx, mod)
        out = self.head(self.norm_out(tokens))
        pt, ph, pw = self.patch
        out = out.view(batch, *grid, pt, ph, pw, channels).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.reshape(batch, channels, frames, height, width)


class QwenStyleVisionTower(nn.Module):
    """Qwen2.5-VL vision tower-style: flat patches -> Conv3d(3->1280, (2,14,14), bias=False) -> blocks -> 2x2 merger."""

    def __init__(
        self,
        dim: int = 1280,
        heads: int = 16,
        hidden: int = 3420,
        depth: int = 2,
        window: int = 1024,
        out_dim: int = 3584,
    ):
        super().__init__()
        self.dim = dim
        self.window = window
        self.patch_embed = nn.Conv3d(3, dim, (2, 14, 14), stride=(2, 14, 14), bias=False)
        self.blocks = nn.ModuleList(Block(dim, heads, hidden, rms=True, gated=True) for _ in range(depth))
        self.merge_norm = nn.RMSNorm(dim)
        self.merger = nn.Sequential(nn.Linear(4 * dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, out_dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        h = self.patch_embed(pixels.view(-1, 3, 2, 14, 14)).view(-1, self.dim)
        h = h.view(-1, self.window, self.dim)
        for block in self.blocks:
            h = block(h)
        return self.merger(self.merge_norm(h).reshape(-1, 4 * self.dim))


class VideoMAEStyleEncoder(nn.Module):
    """VideoMAE-B-style: Conv3d(3->768, (2,16,16)) tubelets + fixed position embedding, ViT blocks, final norm."""

    def __init__(self, tokens: int, dim: int = 768, heads: int = 12, hidden: int = 3072, depth: int = 2):
        super().__init__()
        self.patch_embeddings = nn.Conv3d(3, dim, (2, 16, 16), stride=(2, 16, 16))
        self.register_buffer("position", torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        h = self.patch_embeddings(video).flatten(2).transpose(1, 2) + self.position
        for block in self.blocks:
            h = block(h)
        return self.norm(h)


@dataclass(frozen=True)
class ModelSpec:
    """A model and its inputs: ``build()`` on the default device, ``inputs(device, dtype)``."""

    name: str
    source: str
    build: Callable[[], nn.Module]
    inputs: Callable[[str, torch.dtype], tuple[torch.Tensor, ...]]


def _wan(shape: tuple[int, ...], text_len: int) -> ModelSpec:
    def inputs(device: str, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        return (
            torch.randn(shape, device=device, dtype=dtype),
            torch.full((shape[0],), 500.0, device=device),
            torch.randn(shape[0], text_len, 4096, device=device, dtype=dtype),
        )

    return ModelSpec("wan_dit", f"Wan 1.3B-style DiT, latent {shape}, 2 blocks", WanStyleDiT, inputs)


def _qwen(patches: int) -> ModelSpec:
    def inputs(device: str, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        return (torch.randn(patches, 3 * 2 * 14 * 14, device=device, dtype=dtype),)

    window = min(1024, patches)
    return ModelSpec(
        "qwen25vl_vision",
        f"Qwen2.5-VL-style vision tower, {patches} patches, 2 blocks",
        lambda: QwenStyleVisionTower(window=window),
        inputs,
    )


def _videomae(shape: tuple[int, ...], depth: int = 2) -> ModelSpec:
    tokens = (shape[2] // 2) * (shape[3] // 16) * (shape[4] // 16)

    def inputs(device: str, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        return (torch.randn(shape, device=device, dtype=dtype),)

    return ModelSpec(
        "videomae_b",
        f"VideoMAE-B-style encoder, video {shape}, {depth} block(s)",
        lambda: VideoMAEStyleEncoder(tokens, depth=depth),
        inputs,
    )


GPU_MODELS = (_wan((1, 16, 21, 60, 104), 512), _qwen(16384), _videomae((8, 3, 16, 224, 224)))
CPU_MODELS = (_wan((1, 16, 2, 30, 52), 64), _qwen(512), _videomae((1, 3, 4, 112, 112)))
QUICK_CPU_MODELS = (_videomae((1, 3, 4, 112, 112), depth=1),)


def _pool(device: str, quick: bool) -> tuple[ModelSpec, ...]:
    if device == "cuda":
        return GPU_MODELS
    return QUICK_CPU_MODELS if quick else CPU_MODELS


def models_for(device: str, quick: bool, names: list[str] | None) -> list[ModelSpec]:
    """The models of a run: named ones, else all for the device (CPU quick: one VideoMAE-B block, to compile fast)."""
    pool = _pool(device, quick)
    if names:
        unknown = [n for n in names if n not in {m.name for m in pool}]
        if unknown:
            raise SystemExit(f"unknown model(s) {', '.join(unknown)}; valid: {', '.join(m.name for m in pool)}")
        return [m for m in pool if m.name in names]
    return list(pool)


def spec_named(name: str, device: str, quick: bool) -> ModelSpec:
    """The model called ``name`` at the run's size."""
    return next(m for m in _pool(device, quick) if m.name == name)
