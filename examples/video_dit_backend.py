"""Rewrite the patch embedding of a Wan-style video DiT with the conv_rewrite torch.compile backend.

The DiT patchifies its latents with Conv3d(16 -> dim, kernel = stride = (1, 2, 2)); the backend turns that conv into
reshape + permute + one GEMM before Inductor compiles the graph. With dynamic=True one graph serves every frame count.
Run: python examples/video_dit_backend.py
"""

import warnings

with warnings.catch_warnings():  # torch warns while it imports where NumPy is not installed; nothing here uses NumPy
    warnings.filterwarnings("ignore", "Failed to initialize NumPy", UserWarning)
    import torch
import torch.nn as nn
from torch._dynamo.utils import counters

import conv_rewrite
import conv_rewrite.record


class WanStylePatchEmbed(nn.Module):
    """Latents (B, 16, T, H, W) -> tokens (B, T*H/2*W/2, dim), as WanTransformer3DModel starts."""

    def __init__(self, in_channels: int = 16, dim: int = 256):
        super().__init__()
        self.patch_embedding = nn.Conv3d(in_channels, dim, kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.norm = nn.LayerNorm(dim)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embedding(latents).flatten(2).transpose(1, 2)
        return self.norm(tokens)


def main() -> None:
    torch.manual_seed(0)
    model = WanStylePatchEmbed().eval()
    # The backend rewrites each Dynamo graph, then compiles it with Inductor. Policy "always": every conv that
    # qualifies (the default, "auto", keeps a conv where it is faster on this device, as it can be on a CPU).
    compiled = torch.compile(model, backend=conv_rewrite.backend(policy="always"), dynamic=True)
    with torch.no_grad():
        for frames in (3, 5):  # 9 and 17 video frames after the VAE's 4x temporal compression
            latents = torch.randn(1, 16, frames, 30, 52)
            err = (compiled(latents) - model(latents)).abs().max().item()
            print(f"latent frames {frames}: max abs err vs eager {err:.2e}")
            assert err < 1e-4, err
    print(conv_rewrite.record.last_report())  # the rows of the last graph rewritten
    print(f"Dynamo graphs for 2 frame counts: {counters['stats']['unique_graphs']}")


if __name__ == "__main__":
    main()
