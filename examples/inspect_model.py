"""Ask conv_rewrite.explain what the rewrite does to a model: one row per conv, and each graph's code before/after.

The model has a graph break (a print), so Dynamo hands over two graphs, as torch.compile would; the patch embed
is rewritten, the overlapping refinement conv is not, and the table says why. Run: python examples/inspect_model.py
"""

import warnings

with warnings.catch_warnings():  # torch warns while it imports where NumPy is not installed; nothing here uses NumPy
    warnings.filterwarnings("ignore", "Failed to initialize NumPy", UserWarning)
    import torch
import torch.nn as nn

import conv_rewrite


class Encoder(nn.Module):
    """A 3-d patch embed (VideoMAE-style tubelets), a graph break, then a padded 3x3 conv on the token grid."""

    def __init__(self, dim: int = 32):
        super().__init__()
        self.patch_embed = nn.Conv3d(3, dim, kernel_size=(2, 8, 8), stride=(2, 8, 8))
        self.refine = nn.Conv2d(dim, dim, kernel_size=3, padding=1)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(video)  # (B, dim, T/2, H/8, W/8)
        print(f"token grid {tuple(x.shape[2:])}")  # a graph break
        b, d, t, h, w = x.shape
        x = self.refine(x.transpose(1, 2).reshape(b * t, d, h, w))
        return x.flatten(2).transpose(1, 2)


def main() -> None:
    model = Encoder()
    video = torch.randn(2, 3, 4, 32, 32)
    explanation = conv_rewrite.explain(model, video, policy="always")  # "auto" (default) also weighs the timings
    print(explanation)
    for graph in explanation.graphs:
        print(f"\n---- {graph.name}, before ----\n{graph.before}")
        print(f"---- {graph.name}, after ----\n{graph.after if graph.after != graph.before else '(unchanged)'}")
    row = explanation.rewritten[0]
    print(f"{row.module}: GEMM M={row.gemm[0]} K={row.gemm[1]} N={row.gemm[2]}")


if __name__ == "__main__":
    main()
