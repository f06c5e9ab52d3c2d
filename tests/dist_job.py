"""One gloo job of 2 CPU ranks that runs every distributed case in sequence and saves what each rank saw.

Started by tests/test_distributed.py as ``python tests/dist_job.py RANK WORLD_SIZE PORT OUT_DIR``; the model, the
global batch and the loss live here too, so that the single-process reference builds exactly the same thing.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd
from torch._inductor.custom_graph_pass import CustomGraphPass
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor, init_device_mesh
from torch.nn.parallel import DistributedDataParallel
from torch.utils._python_dispatch import TorchDispatchMode

import conv_rewrite
import conv_rewrite.compile

IN_CHANNELS, DIM, PATCH = 4, 32, (1, 2, 2)
GLOBAL_BATCH, FRAMES, HEIGHT, WIDTH = 4, 2, 8, 8
TOKENS = FRAMES * (HEIGHT // PATCH[1]) * (WIDTH // PATCH[2])
CONV_OPS = ("aten.convolution.default", "aten.convolution_backward.default")


class Block(nn.Module):
    """A pre-norm MLP block with a residual: what sits between a patch embedding and a head."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(F.gelu(self.fc1(self.norm(h))))


class PatchModel(nn.Module):
    """Patch conv (Conv3d, stride == kernel) -> tokens -> block -> linear head."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv3d(IN_CHANNELS, DIM, PATCH, stride=PATCH)
        self.block = Block(DIM)
        self.head = nn.Linear(DIM, IN_CHANNELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.patch(x).flatten(2).transpose(1, 2)))


def build_model() -> PatchModel:
    """The model every rank and the reference start from (same seed, same parameters)."""
    torch.manual_seed(0)
    return PatchModel()


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """(input, target) of the whole global batch; rank r trains on rows [r * B/W, (r + 1) * B/W)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(GLOBAL_BATCH, IN_CHANNELS, FRAMES, HEIGHT, WIDTH, generator=gen)
    target = torch.randn(GLOBAL_BATCH, TOKENS, IN_CHANNELS, generator=gen)
    return x, target


def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out.float(), target)


class PatchTokens(nn.Module):
    """The patch conv alone (its output leaves the graph), or followed by its usual consumer and a linear."""

    def __init__(self, head: bool):
        super().__init__()
        self.patch = nn.Conv3d(IN_CHANNELS, DIM, PATCH, stride=PATCH)
        self.head = nn.Linear(DIM, IN_CHANNELS) if head else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.patch(x)
        return y if self.head is None else self.head(y.flatten(2).transpose(1, 2))


def build_patch_tokens(head: bool) -> PatchTokens:
    torch.manual_seed(3)
    return PatchTokens(head)


def dtensor_input() -> torch.Tensor:
    """The whole input of the DTensor cases; their loss is ``output.pow(2).mean()``."""
    return torch.randn(2, IN_CHANNELS, FRAMES, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(2))


class RecordTargets(CustomGraphPass):
    """Records the call_function targets of every graph it is given (Inductor post-grad graphs, AOT graphs).

    uuid() is None on purpose: Inductor then never serves a cached graph this pass did not see.
    """

    def __init__(self):
        self.graphs: list[list[str]] = []

    def __call__(self, graph: torch.fx.Graph) -> None:
        self.graphs.append([str(n.target) for n in graph.nodes if n.op == "call_function"])

    def uuid(self) -> None:
        return None


def recording_aot_eager(recorder: RecordTargets) -> Callable[..., Any]:
    """aot_eager whose forward and backward ATen graphs go through ``recorder`` first."""

    def compiler(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        recorder(gm.graph)
        return make_boxed_func(gm.forward)

    return aot_autograd(fw_compiler=compiler, bw_compiler=compiler)


class RecordOps(TorchDispatchMode):
    """Records every ATen op run eagerly inside it (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func))
        return func(*args, **(kwargs or {}))


def local_batch(rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, target = global_batch()
    rows = GLOBAL_BATCH // world
    return x[rank * rows : (rank + 1) * rows], target[rank * rows : (rank + 1) * rows]


def full_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter's gradient as one whole fp32 tensor (FSDP2 gradients are gathered from their shards)."""
    grads = {}
    for name, p in model.named_parameters():
        g = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
        grads[name.replace("module.", "").replace("_orig_mod.", "")] = g.detach().float().clone()
    return grads


def train_step(model: nn.Module, compiled: Callable[..., torch.Tensor], rank: int, world: int) -> dict[str, Any]:
    """One forward + backward on this rank's slice; the loss is averaged over ranks (the global batch's loss)."""
    x, target = local_batch(rank, world)
    out = compiled(x)
    loss = loss_fn(out, target)
    loss.backward()
    global_loss = loss.detach().clone()
    dist.all_reduce(global_loss)
    gathered = [torch.empty_like(out.detach().float()) for _ in range(world)]
    dist.all_gather(gathered, out.detach().float().contiguous())
    return {"loss": global_loss.item() / world, "grads": full_grads(model), "out": torch.cat(gathered)}


def fsdp2(model: nn.Module, **kwargs: Any) -> nn.Module:
    fully_shard(model.block, **kwargs)
    fully_shard(model, **kwargs)
    return model


@contextlib.contextmanager
def case(results: dict[str, Any], name: str) -> Iterator[dict[str, Any]]:
    """Times one case and files what it saved under ``name``; Dynamo starts each case with no compiled code."""
    torch._dynamo.reset()
    saved: dict[str, Any] = {}
    start = time.perf_counter()
    yield saved
    saved["seconds"] = time.perf_counter() - start
    results[name] = saved


def rewrite_then_aot_eager(recorder: RecordTargets) -> conv_rewrite.compile.ConvRewriteBackend:
    return conv_rewrite.backend(inner=recording_aot_eager(recorder))


def compiled_step(
    saved: dict[str, Any], model: nn.Module, rank: int, world: int, recorder: RecordTargets, **compile_kwargs: Any
) -> None:
    """One train_step of ``torch.compile(model, **compile_kwargs)``; saves the report rows and the recorded graphs."""
    with conv_rewrite.collect_reports() as report:
        saved.update(train_step(model, torch.compile(model, **compile_kwargs), rank, world))
    saved["rows"] = report.to_dicts()
    saved["graphs"] = recorder.graphs


def dtensor_step(model: PatchTokens, mesh: Any, placements: dict[str, Any], input_placement: Any) -> dict[str, Any]:
    """One compiled forward + backward with the parameters and the input as DTensors of the given placements."""
    for name, placement in placements.items():
        module_name, attr = name.rsplit(".", 1)
        module = model.get_submodule(module_name)
        setattr(module, attr, nn.Parameter(distribute_tensor(getattr(module, attr).detach(), mesh, [placement])))
    recorder = RecordTargets()
    compiled = torch.compile(model, backend=rewrite_then_aot_eager(recorder))
    with conv_rewrite.collect_reports() as report:
        out = compiled(distribute_tensor(dtensor_input(), mesh, [input_placement]))
    out.full_tensor().pow(2).mean().backward()
    return {
        "placements": [str(p) for p in out.placements],
        "out": out.full_tensor().detach(),
        "grads": {name: p.grad.full_tensor() for name, p in model.named_parameters()},
        "rows": report.to_dicts(),
        "graphs": recorder.graphs,
    }


def run_cases(rank: int, world: int) -> dict[str, Any]:
    results: dict[str, Any] = {}

    with case(results, "ddp_backend") as saved:
        recorder = RecordTargets()
        model = DistributedDataParallel(build_model())
        compiled_step(saved, model, rank, world, recorder, backend=rewrite_then_aot_eager(recorder))

    with case(results, "fsdp2_backend") as saved:
        recorder = RecordTargets()
        compiled_step(saved, fsdp2(build_model()), rank, world, recorder, backend=rewrite_then_aot_eager(recorder))

    with case(results, "fsdp2_inductor_pass") as saved:
        recorder = RecordTargets()
        options = {**conv_rewrite.inductor_options(), "post_grad_custom_post_pass": recorder}
        compiled_step(saved, fsdp2(build_model()), rank, world, recorder, options=options)

    with case(results, "fsdp2_convert_eager") as saved:
        if hasattr(conv_rewrite, "convert_"):
            model = build_model()
            saved["rows"] = conv_rewrite.convert_(model).to_dicts()
            fsdp2(model)
            with RecordOps() as ops:
                saved.update(train_step(model, model, rank, world))
            saved["ops"] = sorted(ops.ops)

    for rewrite in (True, False):
        with case(results, f"fsdp2_bf16_{'rewrite' if rewrite else 'plain'}") as saved:
            recorder = RecordTargets()
            backend = rewrite_then_aot_eager(recorder) if rewrite else recording_aot_eager(recorder)
            model = fsdp2(build_model(), mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16))
            compiled_step(saved, model, rank, world, recorder, backend=backend)

    mesh = init_device_mesh("cpu", (world,))
    with case(results, "dtensor_tp_shard0") as saved:
        placements = {"patch.weight": Shard(0), "patch.bias": Shard(0)}
        saved.update(dtensor_step(build_patch_tokens(head=False), mesh, placements, Replicate()))
    with case(results, "dtensor_batch_sharded") as saved:
        placements = {name: Replicate() for name in ("patch.weight", "patch.bias", "head.weight", "head.bias")}
        saved.update(dtensor_step(build_patch_tokens(head=True), mesh, placements, Shard(0)))
    return results


def main(rank: int, world: int, port: int, out_dir: Path) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.save(run_cases(rank, world), out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
