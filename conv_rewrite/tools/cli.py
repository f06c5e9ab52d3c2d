"""The ``conv-rewrite`` command: ``demo`` on the embedded models, ``inspect`` on a user's model.

Both print what the rewrite does to each conv (``explain``), check the rewritten compile against eager, and time
eager, torch.compile, and torch.compile with the rewrite. Errors end the command with one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch
from tabulate import tabulate

from .compare import Comparison, compare
from .demo_models import demo_cases
from .explain import Explanation, explain
from ..options import POLICIES, Options

PROG = "conv-rewrite"
ALWAYS = Options(policy="always")
SUMMARY_HEADERS = (
    "model",
    "convs rewritten",
    "max abs err",
    "numerics",
    "eager ms",
    "compiled ms",
    "compiled+rewrite ms",
    "speedup",
)


class CliError(Exception):
    """A failure the user can act on: printed as one line, no traceback."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def parse_input(spec: str) -> tuple[tuple[int, ...], torch.dtype]:
    """``1x16x5x32x32``, ``1,16,5,32,32`` or either with ``:DTYPE`` (default float32) -> (shape, dtype)."""
    shape_text, _, dtype_name = spec.partition(":")
    if not re.fullmatch(r"\d+([x,]\d+)*", shape_text.strip()):
        raise argparse.ArgumentTypeError(
            f"cannot parse input shape {spec!r}: expected sizes like 1x3x224x224 or 1,3,224,224, "
            "then :DTYPE if not float32"
        )
    dtype = getattr(torch, dtype_name or "float32", None)
    if not isinstance(dtype, torch.dtype):
        raise argparse.ArgumentTypeError(
            f"unknown dtype {dtype_name!r} in {spec!r}: use a torch dtype name such as bfloat16"
        )
    return tuple(int(s) for s in re.split(r"[x,]", shape_text.strip())), dtype


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


def summary_row(name: str, explanation: Explanation, comparison: Comparison | None) -> list[Any]:
    convs = f"{len(explanation.rewritten)}/{len(explanation)}"
    if comparison is None:
        return [name, convs] + ["-"] * (len(SUMMARY_HEADERS) - 2)
    c = comparison
    return [
        name,
        convs,
        f"{c.max_abs_err:.1e}",
        "ok" if c.numerics_ok else "FAIL",
        f"{c.eager_ms:.2f}",
        f"{c.compiled_ms:.2f}",
        f"{c.rewritten_ms:.2f}",
        f"{c.speedup:.2f}x",
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
    return explanation, comparison


def run_demo(args: argparse.Namespace) -> int:
    device = pick_device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    repeats = args.repeats or (50 if device.type == "cuda" else 10 if args.quick else 20)
    rows, failed = [], False
    print(
        f"conv_rewrite demo on {device.type} ({str(dtype).replace('torch.', '')}), torch {torch.__version__}; "
        f"policy 'always' (every conv that qualifies is rewritten, to show what that buys on this device); "
        f"times are medians of {repeats} calls, without autograd",
        flush=True,
    )
    for case in demo_cases(device.type, quick=args.quick):
        torch.manual_seed(0)
        model = case.build().to(device=device, dtype=dtype).eval()
        inputs = (torch.randn(case.input_shape, device=device, dtype=dtype),)
        print(f"\n== {case.name}: {case.what}; input {_fmt_inputs(inputs)}", flush=True)
        explanation, comparison = _explain_and_compare(case.name, model, inputs, ALWAYS, False, repeats)
        rows.append(summary_row(case.name, explanation, comparison))
        counts = (len(explanation.rewritten), len(explanation))
        if counts != (case.rewritten, case.convs):
            print(f"FAIL: expected {case.rewritten} of {case.convs} conv(s) rewritten, got {counts[0]} of {counts[1]}")
        failed = failed or not comparison.numerics_ok or counts != (case.rewritten, case.convs)
    print("\nsummary (speedup = compiled ms / compiled+rewrite ms)")
    print(tabulate(rows, headers=SUMMARY_HEADERS, disable_numparse=True))
    return 1 if failed else 0


def run_inspect(args: argparse.Namespace) -> int:
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
    inputs = tuple(random_input(shape, dtype, device) for shape, dtype in args.input)
    try:
        with torch.no_grad():
            model(*inputs)
    except Exception as exc:
        raise CliError(f"the model failed on input {_fmt_inputs(inputs)}: {_one_line(exc)}") from None
    print(f"== {args.factory}; input {_fmt_inputs(inputs)} on {device.type}", flush=True)
    options = Options(policy=args.policy) if args.policy else Options()
    repeats = None if args.no_bench else args.repeats
    explanation, comparison = _explain_and_compare(args.factory, model, inputs, options, args.dynamic, repeats)
    if comparison is not None:
        print(
            tabulate(
                [summary_row(args.factory, explanation, comparison)], headers=SUMMARY_HEADERS, disable_numparse=True
            )
        )
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="See which convolutions conv_rewrite turns into GEMMs, why the others "
        "are left alone, and what it buys. With no command: demo.",
    )
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)
    device = {"choices": ("auto", "cpu", "cuda"), "default": "auto", "help": "where to run (default: CUDA if present)"}

    demo = commands.add_parser(
        "demo",
        help="the embedded models: a video DiT, Qwen-VL and VideoMAE patch embeds, "
        "a ViT, and convs that must not be rewritten",
    )
    demo.add_argument("--quick", action="store_true", help="smallest sizes and fewer timed calls")
    demo.add_argument("--device", **device)
    demo.add_argument("--repeats", type=int, help="timed calls per measurement")
    demo.set_defaults(run=run_demo)

    inspect = commands.add_parser("inspect", help="a model built by MODULE:FACTORY (called with no arguments)")
    inspect.add_argument("factory", metavar="MODULE:FACTORY")
    inspect.add_argument(
        "--input",
        type=parse_input,
        action="append",
        required=True,
        metavar="SHAPE[:DTYPE]",
        help="one per model argument: 1x16x5x32x32 or 1,16,5,32,32, then :bfloat16 etc.",
    )
    inspect.add_argument("--device", **device)
    inspect.add_argument(
        "--policy", choices=POLICIES, help="which qualifying convs to rewrite (default: auto, or $CONV_REWRITE_POLICY)"
    )
    inspect.add_argument("--dynamic", action="store_true", help="trace with symbolic sizes")
    inspect.add_argument("--json", metavar="PATH", help="write the report as JSON")
    inspect.add_argument("--graphs", metavar="DIR", help="write each graph's code before and after the rewrite")
    inspect.add_argument("--no-bench", action="store_true", help="only explain: no compile, check or timing")
    inspect.add_argument("--repeats", type=int, default=10, help="timed calls per measurement")
    inspect.set_defaults(run=run_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``conv-rewrite`` and ``python -m conv_rewrite``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv or ["demo"])
    try:
        return args.run(args)
    except CliError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
