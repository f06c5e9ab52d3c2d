"""Train a tiny ViT with the rewrite under torch.compile, and check its gradients against eager.

The backend rewrites the Dynamo graph before AOTAutograd, so the backward of the patch embedding is a GEMM too
(no convolution_backward). Run: python examples/train_tiny.py
"""

import copy
import warnings

with warnings.catch_warnings():  # torch warns while it imports where NumPy is not installed; nothing here uses NumPy
    warnings.filterwarnings("ignore", "Failed to initialize NumPy", UserWarning)
    import torch
import torch.nn as nn
import torch.nn.functional as F

import conv_rewrite


class TinyViT(nn.Module):
    """Conv2d 8x8 patch embedding, one MLP over tokens, mean-pooled classifier."""

    def __init__(self, dim: int = 64, classes: int = 3):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=8, stride=8)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(images).flatten(2).transpose(1, 2)
        tokens = tokens + self.mlp(tokens)
        return self.head(tokens.mean(dim=1))


def loss_and_grads(forward, model: nn.Module, images, labels) -> tuple[float, dict[str, torch.Tensor]]:
    """The loss of ``forward`` (the model, compiled or not) and the gradients it leaves on ``model``."""
    model.zero_grad()
    loss = F.cross_entropy(forward(images), labels)
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters()}


def main() -> None:
    torch.manual_seed(0)
    model = TinyViT()
    reference = copy.deepcopy(model)
    backend = conv_rewrite.backend(policy="always")  # the default "auto" may keep the conv where it is faster (CPU)
    compiled = torch.compile(model, backend=backend)

    images, labels = torch.randn(16, 3, 32, 32), torch.randint(0, 3, (16,))
    loss, grads = loss_and_grads(compiled, model, images, labels)
    ref_loss, ref_grads = loss_and_grads(reference, reference, images, labels)
    err = max((grads[n] - ref_grads[n]).abs().max().item() for n in grads)
    print(f"loss {loss:.6f} (eager {ref_loss:.6f}); max grad err vs eager {err:.2e}")
    print(
        f"patch_embed.weight grad err {(grads['patch_embed.weight'] - ref_grads['patch_embed.weight']).abs().max():.2e}"
    )
    assert err < 1e-4, err

    # Learn a task the patch embedding must solve: which color channel holds the bright patch.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(40):
        labels = torch.randint(0, 3, (16,))
        images = torch.randn(16, 3, 32, 32) * 0.5
        for i, channel in enumerate(labels.tolist()):
            y, x = torch.randint(0, 4, (2,)).tolist()
            images[i, channel, 8 * y : 8 * y + 8, 8 * x : 8 * x + 8] += 2.0
        loss = F.cross_entropy(compiled(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first = loss.item() if first is None else first
    print(f"training: loss {first:.3f} -> {loss.item():.3f} in 40 steps")
    print(backend.report)
    print(f"rewritten: {len(backend.report.rewritten)} of {len(backend.report)} conv(s)")
    assert loss.item() < first / 2


if __name__ == "__main__":
    main()
