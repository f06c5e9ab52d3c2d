"""What ``conv-rewrite demo`` and ``conv-rewrite inspect`` run, under the library's default policy.

Both print what the rewrite does to each conv (``explain``), check the rewritten compile against eager, and time
eager, torch.compile, and torch.compile with the rewrite, claiming a speedup only where one was measured clearly.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate

from ..options import Options
from .cli import CliError
from .compare import Comparison, compare
from .demo_models import demo_cases
from .explain import Explanation, explain

SUMMARY_HEADERS = (
    "model",
    "convs rewritten",
    "max abs err",
    "numerics",
    "eager ms",
    "compiled ms",
    "compiled+rewrite ms",
    "rewrite vs compile",
)
TIMES_NOTE = "times in ms: median (interquartile range) of {repeats} calls of each, taking turns, without autograd"
VERDICT_NOTE = (
    "rewrite vs compile: compiled / compiled+rewrite medians where the rewrite changed the graph and the two "
    "interquartile ranges do not overlap"
)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype called ``name`` (in an ``--input`` value)."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise CliError(f"--input: unknown dtype {name!r}: use a torch dtype name such as bfloat16", 2)
    return dtype


def random_input(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Standard normal values for floating dtypes, 0 or 1 for integer and bool ones."""
    if dtype.is_floating_point or dtype.is_complex:
        return torch.randn(shape, dtype=dtype, device=device)
    return torch.randint(0, 2, shape, device=device).to(dtype)


def load_factory(spec: str) -> Callable[[], Any]:
    """The callable named by ``package.module:function``, imported with the current directory on the path."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"expected MODULE:FACTORY (e.g. my_models:build), got {spec!r}", 2)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise CliError(f"cannot import {module_name!r}: {_one_line(exc)}", 2) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise CliError(f"module {module_name!r} has no callable {attr!r}", 2)
    return factory


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda: no CUDA device is available", 2)
    return torch.device(name)


def policy_note(options: Options, chosen: bool = False) -> str:
    """The policy in effect, and where it comes from (``chosen``: on the command line)."""
    if chosen:
        return f"policy {options.policy!r}"
    if os.environ.get("CONV_REWRITE_POLICY"):
        return f"policy {options.policy!r} (from $CONV_REWRITE_POLICY)"
    return f"policy {options.policy!r} (the default: a qualifying conv is rewritten where the GEMM form is faster)"


@contextlib.contextmanager
def progress(label: str) -> Iterator[None]:
    """Show on stderr that ``label`` runs (with a ticking clock on a terminal), then how long it took."""
    stream = sys.stderr
    start = time.perf_counter()
    done = threading.Event()

    def tick() -> None:
        while not done.wait(0.5):
            stream.write(f"\r  {label} ... {time.perf_counter() - start:.0f} s")
            stream.flush()

    ticker = threading.Thread(target=tick, daemon=True) if stream.isatty() else None
    stream.write(f"  {label} ...")
    stream.flush()
    if ticker:
        ticker.start()
    try:
        yield
    finally:
        done.set()
        if ticker:
            ticker.join()
            stream.write(f"\r  {label} ...")
        stream.write(f" done in {time.perf_counter() - start:.1f} s\n")
        stream.flush()


def qualifying(explanation: Explanation) -> int:
    """How many convs qualify for the rewrite: those rewritten, and those the policy kept as convs."""
    kept = [row for row in explanation.skipped if row.reason.startswith(("auto:", "policy 'never'"))]
    return len(explanation.rewritten) + len(kept)


def summary_row(name: str, explanation: Explanation, comparison: Comparison | None) -> list[Any]:
    if comparison is None:
        return [name, f"{len(explanation.rewritten)}/{len(explanation)}"] + ["-"] * (len(SUMMARY_HEADERS) - 2)
    c = comparison
    return [
        name,
        f"{c.rewritten_convs}/{len(explanation)}",
        f"{c.max_abs_err:.1e}",
        "ok" if c.numerics_ok else "FAIL",
        str(c.eager),
        str(c.compiled),
        str(c.rewritten) if c.rewritten is not None else "(as compiled)",
        c.verdict,
    ]


def _fmt_inputs(inputs: Sequence[torch.Tensor]) -> str:
    return ", ".join(f"{tuple(x.shape)} {str(x.dtype).replace('torch.', '')}" for x in inputs)


def _explain_and_compare(
    name: str, model: Any, inputs: tuple[torch.Tensor, ...], options: Options, dynamic: bool, repeats: int | None
) -> tuple[Explanation, Comparison | None]:
    """Print the explain table, then check and time the three ways to run (``repeats=None``: skip that)."""
    try:
        explanation = explain(model, *inputs, dynamic=dynamic, options=options)
    except Exception as exc:
        raise CliError(f"{name}: Dynamo could not capture the model: {_one_line(exc)}") from None
    print(explanation, flush=True)
    if repeats is None:
        return explanation, None

    def labelled(label: str) -> Any:
        return progress(f"{name}: {label}")

    try:
        comparison = compare(model, inputs, repeats=repeats, options=options, progress=labelled)
    except Exception as exc:
        raise CliError(f"{name}: compiling or running the compiled model failed: {_one_line(exc)}") from None
    verdict = "ok" if comparison.numerics_ok else "FAIL: outside tolerance"
    print(f"compiled + rewrite vs eager: max abs err {comparison.max_abs_err:.2e} ({verdict})", flush=True)
    rewritten = f"compiled + rewrite {comparison.rewritten}, " if comparison.rewritten is not None else ""
    print(
        f"ms: eager {comparison.eager}, compiled {comparison.compiled}, {rewritten}rewrite vs compile: "
        f"{comparison.verdict}",
        flush=True,
    )
    return explanation, comparison


def _print_summary(rows: list[list[Any]], repeats: int) -> None:
    print(f"\nsummary ({TIMES_NOTE.format(repeats=repeats)}; {VERDICT_NOTE})")
    print(tabulate(rows, headers=SUMMARY_HEADERS, disable_numparse=True))


def run_demo(args: argparse.Namespace) -> int:
    device = pick_device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    repeats = args.repeats or (50 if device.type == "cuda" else 20 if args.quick else 30)
    options = Options()
    rows, failed = [], False
    print(
        f"conv_rewrite demo on {device.type} ({str(dtype).replace('torch.', '')}), torch {torch.__version__}; "
        f"{policy_note(options)}; {TIMES_NOTE.format(repeats=repeats)}",
        flush=True,
    )
    for case in demo_cases(device.type, quick=args.quick):
        torch.manual_seed(0)
        model = case.build().to(device=device, dtype=dtype).eval()
        inputs = (torch.randn(case.input_shape, device=device, dtype=dtype),)
        print(f"\n== {case.name}: {case.what}; input {_fmt_inputs(inputs)}", flush=True)
        explanation, comparison = _explain_and_compare(case.name, model, inputs, options, False, repeats)
        rows.append(summary_row(case.name, explanation, comparison))
        counts = (qualifying(explanation), len(explanation))
        if counts != (case.patchify, case.convs):
            print(f"FAIL: expected {case.patchify} of {case.convs} conv(s) to qualify, got {counts[0]} of {counts[1]}")
        failed = failed or comparison is None or not comparison.numerics_ok or counts != (case.patchify, case.convs)
    _print_summary(rows, repeats)
    return 1 if failed else 0


def run_inspect(args: argparse.Namespace) -> int:
    shapes = [(shape, torch_dtype(name)) for shape, name in args.input]
    device = pick_device(args.device)
    factory = load_factory(args.factory)
    try:
        model = factory()
    except Exception as exc:
        raise CliError(f"{args.factory}() failed: {_one_line(exc)}") from None
    if isinstance(model, torch.nn.Module):
        model = model.to(device).eval()
    elif not callable(model):
        raise CliError(f"{args.factory}() returned {type(model).__name__}, not a module or callable", 2)
    inputs = tuple(random_input(shape, dtype, device) for shape, dtype in shapes)
    try:
        with torch.no_grad():
            model(*inputs)
    except Exception as exc:
        raise CliError(f"the model failed on input {_fmt_inputs(inputs)}: {_one_line(exc)}") from None
    options = Options(policy=args.policy) if args.policy else Options()
    note = policy_note(options, chosen=args.policy is not None)
    print(f"== {args.factory}; input {_fmt_inputs(inputs)} on {device.type}; {note}", flush=True)
    repeats = None if args.no_bench else args.repeats
    explanation, comparison = _explain_and_compare(args.factory, model, inputs, options, args.dynamic, repeats)
    if comparison is not None:
        _print_summary([summary_row(args.factory, explanation, comparison)], args.repeats)
    if args.json:
        Path(args.json).write_text(explanation.to_json(indent=2))
        print(f"report written to {args.json}")
    if args.graphs:
        write_graphs(explanation, Path(args.graphs))
        print(f"graph code before/after written to {args.graphs}")
    return 0 if comparison is None or comparison.numerics_ok else 1


def write_graphs(explanation: Explanation, folder: Path) -> None:
    """``graph_<i>.before.py`` and ``graph_<i>.after.py`` for every captured graph."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, graph in enumerate(explanation.graphs):
        (folder / f"graph_{i}.before.py").write_text(graph.before)
        (folder / f"graph_{i}.after.py").write_text(graph.after)
