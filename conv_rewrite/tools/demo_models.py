"""Small models with the patch layers of real ones (DESIGN.md section 6), for ``conv-rewrite demo`` and the examples.

Each layer is written as its model writes it (module names, shapes, the consumer of the conv's output), with
random weights; ``demo_cases`` sizes them for the device: real sizes on CUDA, small ones on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


class TransformerBlock(nn.Module):
    """Pre-norm attention + MLP over (B, L, D) tokens."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(attn)
        return x + self.mlp(self.norm2(x))


class VideoDiT(nn.Module):
    """Wan-style video DiT: ``patch_embedding`` Conv3d (1, 2, 2) on latents, a block, unpatchify by linear + permute."""

    def __init__(self, in_channels: int = 16, dim: int = 128, heads: int = 4, patch: tuple[int, int, int] = (1, 2, 2)):
        super().__init__()
        self.patch = patch
        self.patch_embedding = nn.Conv3d(in_channels, dim, kernel_size=patch, stride=patch)
        self.block = TransformerBlock(dim, heads)
        self.norm_out = nn.LayerNorm(dim)
        self.proj_out = nn.Linear(dim, in_channels * math.prod(patch))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = latents.shape
        pt, ph, pw = self.patch
        x = self.patch_embedding(latents).flatten(2).transpose(1, 2)
        x = self.proj_out(self.norm_out(self.block(x)))
        x = x.reshape(b, t // pt, h // ph, w // pw, pt, ph, pw, c)
        return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, c, t, h, w)


class QwenVLPatchEmbed(nn.Module):
    """Qwen2-VL vision ``PatchEmbed``: flat patches (N, 3*2*14*14) -> Conv3d (2, 14, 14) without bias -> (N, D)."""

    def __init__(self, dim: int = 256, in_channels: int = 3, temporal_patch: int = 2, patch: int = 14):
        super().__init__()
        self.shape = (in_channels, temporal_patch, patch, patch)
        self.embed_dim = dim
        kernel = (temporal_patch, patch, patch)
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=kernel, stride=kernel, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states.view(-1, *self.shape)
        return self.proj(hidden_states).view(-1, self.embed_dim)


class VideoMAEEmbed(nn.Module):
    """VideoMAE tubelet embedding: Conv3d (2, 16, 16) on (B, 3, T, H, W), tokens plus a position embedding."""

    def __init__(self, dim: int = 192, frames: int = 4, size: int = 64, tubelet: int = 2, patch: int = 16):
        super().__init__()
        kernel = (tubelet, patch, patch)
        self.projection = nn.Conv3d(3, dim, kernel_size=kernel, stride=kernel)
        tokens = (frames // tubelet) * (size // patch) ** 2
        self.position_embeddings = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projection(pixel_values).flatten(2).transpose(1, 2) + self.position_embeddings


class ViT(nn.Module):
    """A 2-d ViT: Conv2d 16x16 patch embed, class token, position embedding, a block, a head on the class token."""

    def __init__(self, dim: int = 192, heads: int = 3, size: int = 64, patch: int = 16, classes: int = 10):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, dim) * 0.02)
        self.block = TransformerBlock(dim, heads)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.block(x))[:, 0])


class NotPatchify(nn.Module):
    """Convs the rewrite must leave alone: padded, dilated, grouped, and overlapping (stride < kernel)."""

    def __init__(self, channels: int = 8):
        super().__init__()
        self.padded = nn.Conv2d(channels, channels, kernel_size=3, padding="same")
        self.dilated = nn.Conv2d(channels, channels, kernel_size=2, stride=2, dilation=2)
        self.grouped = nn.Conv2d(channels, channels, kernel_size=2, stride=2, groups=4)
        self.overlapping = nn.Conv2d(channels, channels, kernel_size=4, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.overlapping(F.gelu(self.grouped(F.gelu(self.dilated(F.gelu(self.padded(x)))))))


@dataclass(frozen=True)
class DemoCase:
    """A demo model, how to build it, the shape of its input, its convs, and how many of them are patchify convs
    (qualify for the rewrite; the policy decides which of those are rewritten)."""

    name: str
    what: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    convs: int
    patchify: int


def demo_cases(device: str = "cpu", quick: bool = False) -> list[DemoCase]:
    """The zoo, at real sizes for CUDA, small ones for the CPU, smallest with ``quick``."""
    if device == "cuda":
        return [
            DemoCase(
                "video_dit",
                "Wan 1.3B-style DiT, 480p, 5 latent frames",
                lambda: VideoDiT(16, 1536, 12),
                (1, 16, 5, 60, 104),
                1,
                1,
            ),
            DemoCase(
                "qwen_vl_patch_embed",
                "Qwen2-VL vision patch embed, 8192 patches",
                lambda: QwenVLPatchEmbed(1280),
                (8192, 3 * 2 * 14 * 14),
                1,
                1,
            ),
            DemoCase(
                "videomae_embed",
                "VideoMAE-B tubelet embed, 16 frames 224px",
                lambda: VideoMAEEmbed(768, 16, 224),
                (8, 3, 16, 224, 224),
                1,
                1,
            ),
            DemoCase("vit", "ViT-B/16 at 224px", lambda: ViT(768, 12, 224), (32, 3, 224, 224), 1, 1),
            DemoCase(
                "not_patchify",
                "padded, dilated, grouped, overlapping",
                lambda: NotPatchify(64),
                (8, 64, 256, 256),
                4,
                0,
            ),
        ]
    scale = 1 if quick else 2
    return [
        DemoCase(
            "video_dit",
            "Wan-style DiT: patch embed + block",
            lambda: VideoDiT(16, 64 * scale, 2),
            (1, 16, 2 * scale, 16 * scale, 16 * scale),
            1,
            1,
        ),
        DemoCase(
            "qwen_vl_patch_embed",
            f"Qwen2-VL vision patch embed, {512 * scale} patches",
            lambda: QwenVLPatchEmbed(128 * scale),
            (512 * scale, 3 * 2 * 14 * 14),
            1,
            1,
        ),
        DemoCase(
            "videomae_embed",
            "VideoMAE tubelet embed",
            lambda: VideoMAEEmbed(96 * scale, 4, 32 * scale),
            (2, 3, 4, 32 * scale, 32 * scale),
            1,
            1,
        ),
        DemoCase(
            "vit",
            "ViT with 16x16 patches",
            lambda: ViT(96 * scale, 3, 32 * scale),
            (4, 3, 32 * scale, 32 * scale),
            1,
            1,
        ),
        DemoCase(
            "not_patchify",
            "padded, dilated, grouped, overlapping",
            lambda: NotPatchify(8),
            (1, 8, 32 * scale, 32 * scale),
            4,
            0,
        ),
    ]
