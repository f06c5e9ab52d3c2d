"""The patchify-conv shapes the benchmark runs, as data: each with the model and the DESIGN.md section it comes from.

GPU shapes are the real ones (DESIGN.md sections 5 and 6); CPU shapes are smaller versions that fit a 2-core run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    """One patchify conv: input (B, C, S1..SN) -> ``out_channels`` with stride == kernel."""

    name: str
    source: str
    x: tuple[int, ...]
    out_channels: int
    kernel: tuple[int, ...]
    bias: bool = True

    @property
    def dims(self) -> int:
        return len(self.kernel)

    @property
    def gemm(self) -> tuple[int, int, int]:
        """(M, K, N) of the GEMM the conv becomes."""
        m = self.x[0] * math.prod(s // k for s, k in zip(self.x[2:], self.kernel))
        return m, self.x[1] * math.prod(self.kernel), self.out_channels

    @property
    def gflop(self) -> float:
        m, k, n = self.gemm
        return 2 * m * k * n / 1e9


_S5 = "DESIGN.md s5 table 1"
_S5B = "DESIGN.md s5 second pass"
_S6 = "DESIGN.md s6"
_S9 = "DESIGN.md s9 (issue 13)"

GPU_SHAPES: tuple[Shape, ...] = (
    Shape("wan14b_720p", f"{_S5}: Wan 14B 720p 81f patch_embedding", (1, 16, 21, 90, 160), 5120, (1, 2, 2)),
    Shape("hunyuan_720p", f"{_S5}: HunyuanVideo 720p 129f", (1, 16, 33, 90, 160), 3072, (1, 2, 2)),
    Shape(
        "qwen25vl_16k",
        f"{_S5}: Qwen2.5-VL vision PatchEmbed, 16k patches",
        (16384, 3, 2, 14, 14),
        1280,
        (2, 14, 14),
        False,
    ),
    Shape("videomae_b", f"{_S5}: VideoMAE-B 16 frames, batch 8", (8, 3, 16, 224, 224), 768, (2, 16, 16)),
    Shape("wan13b_480p", f"{_S5}: Wan 1.3B 480p 81f patch_embedding", (1, 16, 21, 60, 104), 1536, (1, 2, 2)),
    Shape("hunyuan15_pw", f"{_S5}: HunyuanVideo 1.5 pointwise embed k=s=1", (1, 65, 31, 45, 80), 2048, (1, 1, 1)),
    Shape("clip_l14_336", f"{_S5B}: CLIP-L/14 336px, batch 32", (32, 3, 336, 336), 1024, (14, 14), False),
    Shape("siglip_so400m", f"{_S5B}: SigLIP so400m 384px (crop), batch 16", (16, 3, 384, 384), 1152, (14, 14)),
    Shape("vit_b16_224", f"{_S5B}: ViT-B/16 224px, batch 64", (64, 3, 224, 224), 768, (16, 16)),
    Shape("sd35_large_1024", f"{_S5B}: SD3.5-large 1024px, CFG batch 2", (2, 16, 128, 128), 2432, (2, 2)),
    Shape("dit_xl_512", f"{_S5B}: DiT-XL 512px, batch 8", (8, 4, 64, 64), 1152, (2, 2)),
    Shape("cogvideox_49f", f"{_S5B}: CogVideoX 49f, per frame", (13, 16, 60, 90), 3072, (2, 2)),
    Shape("mochi", f"{_S5B}: Mochi, per frame", (28, 12, 60, 106), 3072, (2, 2)),
    Shape("wav2vec2_l5", f"{_S5B}: wav2vec2 conv layer 5, 20 s, batch 8 (crop)", (8, 512, 3999), 512, (2,), False),
    Shape("acestep_conv1d", f"{_S5B}: ACE-Step Conv1d", (2, 192, 4096), 2048, (2,)),
    Shape("wan14b_i2v_720p", f"{_S6}: Wan 14B I2V Conv3d(36->5120), 720p", (1, 36, 21, 90, 160), 5120, (1, 2, 2)),
    Shape("wan22_5b_720p", f"{_S6}: Wan 2.2 5B Conv3d(48->3072), 720p 121f", (1, 48, 31, 44, 80), 3072, (1, 2, 2)),
    Shape(
        "qwen3vl_16k",
        f"{_S6}: Qwen3-VL Conv3d(3->1152,(2,16,16)), 16k patches",
        (16384, 3, 2, 16, 16),
        1152,
        (2, 16, 16),
    ),
    Shape(
        "vjepa2_l",
        f"{_S6}: V-JEPA 2 ViT-L Conv3d(3->1024,(2,16,16)), 64f 256px, batch 2",
        (2, 3, 64, 256, 256),
        1024,
        (2, 16, 16),
    ),
    Shape("unetr", f"{_S6}: MONAI UNETR Conv3d(1->768,16), 96^3, batch 2", (2, 1, 96, 96, 96), 768, (16, 16, 16)),
    Shape(
        "glm4v_16k",
        f"{_S9}: GLM-4V Conv3d(3->1536,(2,14,14)) with bias, 16k patches",
        (16384, 3, 2, 14, 14),
        1536,
        (2, 14, 14),
    ),
    Shape(
        "qwen25vl_16k_bias",
        f"{_S9}: Qwen2.5-VL-shaped conv with a bias, 16k patches",
        (16384, 3, 2, 14, 14),
        1280,
        (2, 14, 14),
    ),
)

CPU_SHAPES: tuple[Shape, ...] = (
    Shape("wan_480p_2f", "DESIGN.md s5 CPU: Wan 480p latent, 2 frames", (1, 16, 2, 60, 104), 1536, (1, 2, 2)),
    Shape(
        "qwen25vl_512",
        "DESIGN.md s5 CPU: Qwen2.5-VL PatchEmbed, 512 patches",
        (512, 3, 2, 14, 14),
        1280,
        (2, 14, 14),
        False,
    ),
    Shape("vit_b16_224_b2", "DESIGN.md s5: ViT-B/16 224px, batch 2", (2, 3, 224, 224), 768, (16, 16)),
    Shape("acestep_conv1d", "DESIGN.md s5: ACE-Step Conv1d", (1, 192, 1024), 2048, (2,)),
)

TINY_SHAPES: tuple[Shape, ...] = (Shape("tiny", "smoke test", (1, 4, 3, 8, 8), 32, (1, 2, 2)),)

QUICK_CPU = ("wan_480p_2f", "vit_b16_224_b2")


def shapes_for(device: str, quick: bool, names: list[str] | None) -> list[Shape]:
    """The shapes of a run: named ones (from any list), else the device's list (CPU quick: a subset)."""
    everything = {s.name: s for s in GPU_SHAPES + CPU_SHAPES + TINY_SHAPES}
    if names:
        unknown = [n for n in names if n not in everything]
        if unknown:
            raise SystemExit(f"unknown shape(s) {', '.join(unknown)}; valid: {', '.join(everything)}")
        return [everything[n] for n in names]
    if device == "cpu":
        return [s for s in CPU_SHAPES if not quick or s.name in QUICK_CPU]
    return list(GPU_SHAPES)
