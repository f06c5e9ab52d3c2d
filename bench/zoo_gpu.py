"""End to end on a GPU: the zoo models at real size in bf16, default torch.compile vs the rewrite backend.

For each model: eager output as the reference; torch.compile (Inductor) and torch.compile(backend=
conv_rewrite.backend()) (the rewrite, then the same Inductor), each timed with do_bench (median, ms) and checked
against eager by relative L2 error; then, while the time budget lasts, one fwd+bwd step of each. Prints a markdown
table last and writes every number to --out as JSON.

    python -m bench.zoo_gpu --out results.json --budget-s 300 wan_t2v videomae
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import torch

import conv_rewrite
import conv_rewrite.compile
from bench.zoo_models import FACTORIES, ZooModel

DEFAULT_MODELS = ("wan_t2v", "videomae", "qwen2_5_vl_vision", "hunyuan_video")


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def _bench(fn: Callable[[], Any], **kwargs: Any) -> float:
    """Median ms of ``fn`` (CUDA events, after warm-up)."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=50, rep=300, return_mode="median", **kwargs)


Compiled = tuple[Callable[..., Any], conv_rewrite.compile.ConvRewriteBackend | None]


def _variants(policy: str) -> dict[str, Callable[[torch.nn.Module], Compiled]]:
    """The two ways to compile a model that are compared: Inductor alone, and the rewrite then Inductor."""

    def default(model: torch.nn.Module) -> tuple[Callable[..., Any], None]:
        return torch.compile(model), None

    def rewrite(model: torch.nn.Module) -> tuple[Callable[..., Any], conv_rewrite.compile.ConvRewriteBackend]:
        backend = conv_rewrite.backend(policy=policy)
        return torch.compile(model, backend=backend), backend

    return {"inductor": default, "conv_rewrite": rewrite}


def forward(zoo: ZooModel, policy: str) -> dict[str, Any]:
    """Forward only, under no_grad: compile time, median ms and error against eager for each variant."""
    row: dict[str, Any] = {}
    with torch.no_grad():
        ref = zoo.run()
        for variant, make in _variants(policy).items():
            torch._dynamo.reset()
            compiled, backend = make(zoo.model)
            start = time.perf_counter()
            out = zoo.run(compiled)
            torch.cuda.synchronize()
            row[variant] = {
                "compile_s": round(time.perf_counter() - start, 1),
                "ms": _bench(lambda compiled=compiled: zoo.run(compiled)),
                "rel_err_vs_eager": _rel_err(out, ref),
            }
            if backend is not None:
                row[variant]["rewritten"] = [(r.module, r.gemm, r.output_layout) for r in backend.report.rewritten]
                row[variant]["skipped"] = [(r.module, r.reason) for r in backend.report.skipped]
    return row


def train_step(zoo: ZooModel, policy: str) -> dict[str, Any]:
    """One fwd + bwd (loss = sum(out * fixed random)) for each variant: compile time and median ms."""
    row: dict[str, Any] = {}
    params = [p for p in zoo.model.parameters() if p.requires_grad]
    with torch.no_grad():
        weights = torch.randn_like(zoo.run())
    for variant, make in _variants(policy).items():
        torch._dynamo.reset()
        compiled, _ = make(zoo.model)

        def step(compiled: Callable[..., Any] = compiled) -> None:
            (zoo.run(compiled).float() * weights).sum().backward()

        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        row[variant] = {"compile_s": round(time.perf_counter() - start, 1), "ms": _bench(step, grad_to_none=params)}
    for p in params:
        p.grad = None
    return row


def _environment() -> dict[str, Any]:
    import diffusers
    import transformers

    return {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }


def _table(results: dict[str, Any]) -> str:
    lines = [
        "| model | step | Inductor ms | rewrite ms | speedup | rel err vs eager (Inductor / rewrite) | compile s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, stages in results["models"].items():
        for stage, row in stages.items():
            if "error" in row:
                lines.append(f"| {name} | {stage} | error: {row['error'][:80]} | | | | |")
                continue
            a, b = row["inductor"], row["conv_rewrite"]
            err = f"{a['rel_err_vs_eager']:.1e} / {b['rel_err_vs_eager']:.1e}" if "rel_err_vs_eager" in a else "-"
            lines.append(
                f"| {name} | {stage} | {a['ms']:.3f} | {b['ms']:.3f} | {a['ms'] / b['ms']:.2f}x | {err} "
                f"| {a['compile_s']} / {b['compile_s']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=DEFAULT_MODELS, help=f"of: {', '.join(FACTORIES)}")
    parser.add_argument("--out", default="zoo_gpu.json")
    parser.add_argument("--budget-s", type=float, default=300.0, help="start no new stage after this many seconds")
    parser.add_argument("--train", action="store_true", help="also time fwd+bwd while the budget lasts")
    parser.add_argument("--policy", default="always", help="the rewrite's policy (always: every patchify conv)")
    args = parser.parse_args()
    unknown = sorted(set(args.models) - set(FACTORIES))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; valid models: {', '.join(FACTORIES)}")

    start = time.perf_counter()
    results: dict[str, Any] = {"environment": {**_environment(), "policy": args.policy}, "models": {}}
    stages = [(name, "fwd", forward) for name in args.models]
    if args.train:
        stages += [(name, "fwd+bwd", train_step) for name in args.models]
    for name, stage, run in stages:
        if time.perf_counter() - start > args.budget_s:
            results["models"].setdefault(name, {})[stage] = {"error": "not run: time budget spent"}
            continue
        with torch.device("cuda"):  # initialise the weights on the GPU: seconds instead of minutes on the host
            zoo = FACTORIES[name]("real", dtype=torch.bfloat16, device="cuda")
        try:
            results["models"].setdefault(name, {})[stage] = run(zoo, args.policy)
        except Exception as exc:  # noqa: BLE001 (one model's failure must not lose the others' numbers)
            results["models"].setdefault(name, {})[stage] = {"error": f"{type(exc).__name__}: {exc}"}
        del zoo
        torch.cuda.empty_cache()
        done = json.dumps(results["models"][name][stage])[:400]
        print(f"[{time.perf_counter() - start:6.1f}s] {name} {stage}: {done}", flush=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1, default=str)
    print(json.dumps(results["environment"]))
    print(_table(results))


if __name__ == "__main__":
    main()
