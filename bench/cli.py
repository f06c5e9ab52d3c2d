"""Command line: choose device, precision, shapes and models; run; print the tables; write JSON, text and a plot."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .config import DTYPES, RunConfig
from .models import models_for
from .output import plot, report, sort_rows, write_json
from .runner import Task, run_parallel, run_serial
from .shapes import shapes_for
from .variants import has_convert, model_variants


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=tuple(DTYPES), help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--quick", action="store_true", help="CPU: fewer and smaller shapes, one model")
    p.add_argument("--max-autotune", action="store_true", help="add mode='max-autotune-no-cudagraphs' columns")
    p.add_argument("--shapes", help="comma-separated shape names (bench/shapes.py); default: the device's list")
    p.add_argument("--models", help="comma-separated model names (bench/models.py); default: all")
    p.add_argument("--no-ops", action="store_true", help="skip the op level")
    p.add_argument("--no-models", action="store_true", help="skip the model level")
    p.add_argument("--no-tokens", action="store_true", help="skip the .flatten(2).transpose(1, 2) consumer cases")
    p.add_argument("--variants", help="comma-separated columns to run (default: all), e.g. conv,rw_backend,floor")
    p.add_argument(
        "--cold-compile",
        action=argparse.BooleanOptionalAction,
        help="compile with Inductor's caches off, for cold compile times (default: on for cuda, off for cpu)",
    )
    p.add_argument("--workers", type=int, help="compile in N processes (default: cuda min(8, cores/2), cpu 0)")
    p.add_argument(
        "--budget", type=float, default=3600.0, help="seconds for compiling; tasks not started by then are skipped"
    )
    p.add_argument("--op-timeout", type=float, default=240.0, help="compile seconds per op shape (parallel runs)")
    p.add_argument(
        "--model-timeout", type=float, default=480.0, help="compile seconds per model variant (parallel runs)"
    )
    p.add_argument(
        "--timing-timeout", type=float, default=300.0, help="seconds for the whole timing phase of a parallel run"
    )
    p.add_argument(
        "--rep-ms", type=float, help="timing budget per measurement, x3 for models (default: 20 cuda, 100 cpu)"
    )
    p.add_argument("--out", default="bench_results", help="output folder for results.json, results.md, speedups.png")
    p.add_argument("--from-json", help="only re-render the tables and plot of an earlier results.json into --out")
    return p.parse_args(argv)


def tasks_for(args: argparse.Namespace) -> list[Task]:
    """Models first (their compiles are the longest), then every op shape, then its consumer form for 3-d shapes."""
    tasks: list[Task] = []
    if not args.no_models:
        for spec in models_for(args.device, args.quick, args.models.split(",") if args.models else None):
            tasks += [
                Task("model", spec.name, variant=v.name, timeout_s=args.model_timeout)
                for v in model_variants()
                if not args.variants or v.name in args.variants.split(",")
            ]
    if not args.no_ops:
        for shape in shapes_for(args.device, args.quick, args.shapes.split(",") if args.shapes else None):
            tasks.append(Task("op", shape.name, timeout_s=args.op_timeout))
            if shape.dims == 3 and not args.no_tokens:
                tasks.append(Task("op", shape.name, tokens=True, timeout_s=args.op_timeout))
    return tasks


def environment(cfg: RunConfig) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": cfg.device,
        "dtype": cfg.dtype,
        "max_autotune": cfg.max_autotune,
        "cold_compile": cfg.cold_compile,
        "convert_": "available" if has_convert() else "not in this checkout (column skipped)",
    }
    if cfg.device == "cuda":
        import triton

        meta |= {
            "gpu": torch.cuda.get_device_name(),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "triton": triton.__version__,
        }
    else:
        meta |= {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    return meta


def write_outputs(out: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """results.json, results.md (printed too) and speedups.png (when matplotlib is installed)."""
    rows = sort_rows(rows)
    text = report(rows, meta)
    write_json(out / "results.json", rows, meta)
    (out / "results.md").write_text(text + "\n")
    print(text, flush=True)
    plotted = plot(out / "speedups.png", rows)
    print(
        f"\nwrote {out / 'results.json'}, {out / 'results.md'}"
        + (f", {out / 'speedups.png'}" if plotted else " (no plot: matplotlib not installed)")
    )


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
        write_outputs(out, data["results"], data["meta"])
        return 0
    cfg = RunConfig(
        device=args.device,
        dtype=args.dtype or ("bf16" if args.device == "cuda" else "fp32"),
        quick=args.quick,
        max_autotune=args.max_autotune,
        cold_compile=args.device == "cuda" if args.cold_compile is None else args.cold_compile,
        only=tuple(args.variants.split(",")) if args.variants else (),
        rep_ms=args.rep_ms or (20.0 if args.device == "cuda" else 100.0),
        model_rep_ms=3 * (args.rep_ms or (20.0 if args.device == "cuda" else 100.0)),
    )
    workers = (
        args.workers
        if args.workers is not None
        else (min(8, (os.cpu_count() or 2) // 2) if args.device == "cuda" else 0)
    )
    tasks = tasks_for(args)
    start = time.monotonic()

    def log(line: str) -> None:
        print(f"[{time.monotonic() - start:6.1f} s] {line}", flush=True)

    log(f"{len(tasks)} tasks on {cfg.device} ({cfg.dtype}), {workers or 'no'} worker processes")
    if workers:
        rows = run_parallel(tasks, cfg, workers, args.budget, args.timing_timeout, log)
    else:
        rows = run_serial(tasks, cfg, args.budget, log)
    meta = environment(cfg) | {"wall_s": round(time.monotonic() - start, 1), "argv": " ".join(sys.argv[1:])}
    write_outputs(out, rows, meta)
    return 0
