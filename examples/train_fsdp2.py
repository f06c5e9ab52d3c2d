"""Train a patch-conv transformer with FSDP2 and torch.compile, with or without the conv_rewrite backend.

Prints the median training-step time and how far this run's first gradients are from an eager fp32 run of the
same sharded model on the same batch. Runs on CPU ranks (gloo) and on GPUs (nccl, one per rank):

    torchrun --nproc_per_node 2 examples/train_fsdp2.py                        # tiny model, fp32
    torchrun --nproc_per_node 2 examples/train_fsdp2.py --compile default
    torchrun --nproc_per_node 1 examples/train_fsdp2.py --wan480p              # Wan-style, (1,16,21,60,104), bf16

The model is compiled region by region (patch embedding, each block, head), the usual way with FSDP2: its hooks are
graph breaks, and a whole-model torch.compile of a forward that loops over FSDP2 blocks falls back to eager for that
forward, so the patch conv would never reach the compiler.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
import warnings
from dataclasses import asdict, dataclass

with warnings.catch_warnings():  # torch warns while it imports where NumPy is not installed; nothing here uses NumPy
    warnings.filterwarnings("ignore", "Failed to initialize NumPy", UserWarning)
    import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

import conv_rewrite


@dataclass(frozen=True)
class Size:
    """Model and latent sizes: the latent is (batch, channels, frames, height, width)."""

    latent: tuple[int, int, int, int, int]
    patch: tuple[int, int, int]
    dim: int
    heads: int
    ffn: int
    blocks: int
    dtype: str


TINY = Size(latent=(2, 4, 3, 16, 16), patch=(1, 2, 2), dim=64, heads=4, ffn=128, blocks=2, dtype="float32")
# Wan 2.1 1.3B's width (dim 1536, 12 heads, FFN 8960) at its 480p / 81-frame latent, with a few blocks.
WAN480P = Size(latent=(1, 16, 21, 60, 104), patch=(1, 2, 2), dim=1536, heads=12, ffn=8960, blocks=2, dtype="bfloat16")


PATCH_WEIGHT = "patch_embed.proj.weight"


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm_q = nn.RMSNorm(dim, eps=1e-6)
        self.norm_k = nn.RMSNorm(dim, eps=1e-6)
        self.out = nn.Linear(dim, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        q, k = self.norm_q(q), self.norm_k(k)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))


class Block(nn.Module):
    """Wan-style transformer block: self-attention with q/k RMSNorm, then a GELU(tanh) FFN, both pre-norm."""

    def __init__(self, dim: int, heads: int, ffn: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(approximate="tanh"), nn.Linear(ffn, dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.norm1(h))
        return h + self.ffn(self.norm2(h))


class PatchEmbed(nn.Module):
    """Patch conv (stride == kernel) -> tokens (B, L, dim), as in timm's and diffusers' PatchEmbed."""

    def __init__(self, channels: int, dim: int, patch: tuple[int, int, int]):
        super().__init__()
        self.proj = nn.Conv3d(channels, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Head(nn.Module):
    """Tokens -> the latent's shape: a linear to channels * patch, then unpatchify."""

    def __init__(self, channels: int, dim: int, patch: tuple[int, int, int]):
        super().__init__()
        self.channels, self.patch = channels, patch
        self.norm = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.proj = nn.Linear(dim, channels * patch[0] * patch[1] * patch[2])

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        out = self.proj(self.norm(tokens)).view(tokens.shape[0], *grid, *self.patch, self.channels)
        sizes = (g * p for g, p in zip(grid, self.patch))
        return out.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(tokens.shape[0], self.channels, *sizes)


class PatchTransformer(nn.Module):
    """Patch embedding -> transformer blocks -> head, on a video latent (B, C, T, H, W)."""

    def __init__(self, size: Size):
        super().__init__()
        channels, self.patch = size.latent[1], size.patch
        self.patch_embed = PatchEmbed(channels, size.dim, size.patch)
        self.blocks = nn.ModuleList(Block(size.dim, size.heads, size.ffn) for _ in range(size.blocks))
        self.head = Head(channels, size.dim, size.patch)

    def regions(self) -> list[nn.Module]:
        """What to compile: each block and the modules around them (FSDP2's hooks between them stay eager)."""
        return [self.patch_embed, *self.blocks, self.head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = tuple(s // p for s, p in zip(x.shape[2:], self.patch))
        tokens = self.patch_embed(x)
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(tokens, grid)


def shard(model: PatchTransformer, dtype: torch.dtype | None) -> PatchTransformer:
    """FSDP2: each block, then the root (patch conv and head); bf16 compute keeps fp32 master weights."""
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype else MixedPrecisionPolicy()
    for block in model.blocks:
        fully_shard(block, mp_policy=policy)
    return fully_shard(model, mp_policy=policy)


def train_step(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    loss = F.mse_loss(model(x).float(), target)
    loss.backward()
    return loss.detach()


def full_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: (p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad).float()
        for name, p in model.named_parameters()
    }


def relative_errors(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict[str, float]:
    """||g - g_ref|| / ||g_ref|| per parameter."""
    return {name: ((grads[name] - ref).norm() / ref.norm()).item() for name, ref in reference.items()}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wan480p", action="store_true", help="Wan-style model at the 480p/81-frame latent, bf16")
    parser.add_argument(
        "--compile",
        choices=("default", "conv_rewrite"),
        default="conv_rewrite",
        help="compile each region with Inductor as it is, or with conv_rewrite.backend()",
    )
    parser.add_argument("--blocks", type=int, help="number of transformer blocks (default: 2)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps after 2 warm-up steps")
    parser.add_argument("--json", help="also write the results to this file (rank 0)")
    args = parser.parse_args()
    size = WAN480P if args.wan480p else TINY
    if args.blocks is not None:
        size = Size(**{**asdict(size), "blocks": args.blocks})

    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    dtype = getattr(torch, size.dtype)
    torch.backends.cudnn.allow_tf32 = False  # the reference run is fp32 throughout, its conv included

    torch.manual_seed(0)
    base = PatchTransformer(size).to(device)
    reference = shard(copy.deepcopy(base), None)
    model = shard(base, dtype if dtype != torch.float32 else None)
    backend = conv_rewrite.backend() if args.compile == "conv_rewrite" else "inductor"
    for region in model.regions():
        region.compile(backend=backend)

    gen = torch.Generator(device).manual_seed(1 + rank)
    x = torch.randn(size.latent, generator=gen, device=device)
    target = torch.randn(size.latent, generator=gen, device=device)

    train_step(reference, x, target)
    with conv_rewrite.collect_reports() as report:
        train_step(model, x, target)
    errors = relative_errors(full_grads(model), full_grads(reference))
    del reference

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for step in range(2 + args.steps):
        synchronize(device)
        start = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        train_step(model, x, target)
        synchronize(device)
        if step >= 2:
            times.append(time.perf_counter() - start)

    worst = max(errors, key=errors.get)
    results = {
        "model": "wan480p" if args.wan480p else "tiny",
        "latent": size.latent,
        "blocks": size.blocks,
        "dtype": size.dtype,
        "world_size": world,
        "backend": dist.get_backend(),
        "device": str(device),
        "compile": args.compile,
        "patch_conv_rewritten": bool(report.rewritten),
        "step_ms_median": 1e3 * statistics.median(times),
        "step_ms_min": 1e3 * min(times),
        "grad_rel_err_patch_weight": errors[PATCH_WEIGHT],
        "grad_rel_err_worst": errors[worst],
        "grad_rel_err_worst_param": worst,
    }
    if rank == 0:
        print(
            f"model {results['model']} ({size.blocks} blocks, dim {size.dim}), latent {size.latent}, {size.dtype}, "
            f"world size {world} ({results['backend']}), compile {args.compile}"
        )
        if args.compile == "conv_rewrite":
            print(report)
        print(
            f"step time: median {results['step_ms_median']:.2f} ms, min {results['step_ms_min']:.2f} ms "
            f"over {args.steps} steps"
        )
        print(
            f"grads vs eager fp32 run, ||g - g_ref|| / ||g_ref||: {PATCH_WEIGHT} "
            f"{results['grad_rel_err_patch_weight']:.2e}, worst {worst} {results['grad_rel_err_worst']:.2e}"
        )
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
