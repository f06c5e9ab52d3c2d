"""torch.export a ViT-style patch embed, rewrite the exported graph, run it; then AOTInductor-compile and load it.

``conv_rewrite.rewrite`` works on the ATen graph torch.export produces; for AOTInductor, the same rewrite runs
inside Inductor through ``inductor_options()``. Run: python examples/export_rewrite.py
"""

import tempfile
import time
import warnings
from pathlib import Path

with warnings.catch_warnings():  # torch warns while it imports where NumPy is not installed; nothing here uses NumPy
    warnings.filterwarnings("ignore", "Failed to initialize NumPy", UserWarning)
    import torch
import torch.nn as nn

import conv_rewrite


class PatchEmbedHead(nn.Module):
    """Conv2d 16x16 patch embedding (as in timm's PatchEmbed) and a linear head on the mean token."""

    def __init__(self, dim: int = 96, classes: int = 10):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=16, stride=16)
        self.head = nn.Linear(dim, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.patch_embed(images).flatten(2).transpose(1, 2).mean(dim=1))


def main() -> None:
    torch.manual_seed(0)
    model = PatchEmbedHead().eval()
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        expected = model(images)

        exported = torch.export.export(model, (images,))
        graph_module = exported.module()
        report = conv_rewrite.rewrite(graph_module, policy="always")  # "auto" (default) may keep a faster conv
        print(report)
        assert not any(node.target is torch.ops.aten.conv2d.default for node in graph_module.graph.nodes)
        print(f"exported + rewritten: max abs err vs eager {(graph_module(images) - expected).abs().max():.2e}")

        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder, conv_rewrite.collect_reports() as reports:
            package = torch._inductor.aoti_compile_and_package(
                exported,
                package_path=str(Path(folder) / "model.pt2"),
                inductor_configs=conv_rewrite.inductor_options(policy="always"),
            )
            loaded = torch._inductor.aoti_load_package(package)
            err = (loaded(images) - expected).abs().max().item()
        print(f"AOTInductor: compiled and loaded in {time.perf_counter() - start:.1f} s, {reports.summary()}")
        print(f"AOTInductor: max abs err vs eager {err:.2e}")
        assert err < 1e-4 and len(reports.rewritten) == 1


if __name__ == "__main__":
    main()
