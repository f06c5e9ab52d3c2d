"""The ``conv-rewrite`` command line: its arguments, and ``main``, which runs ``demo`` or ``inspect``.

Nothing here imports torch: ``--help`` and usage errors answer at once, and torch, the library and the demo models are
imported (``commands``) only when a command runs. Errors end the command with one line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any, NoReturn

from ..options import POLICIES

PROG = "conv-rewrite"


class CliError(Exception):
    """A failure the user can act on: printed as one line, no traceback."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_input(spec: str) -> tuple[tuple[int, ...], str]:
    """``1x16x5x32x32``, ``1,16,5,32,32`` or either with ``:DTYPE`` -> (shape, dtype name, default float32).

    The name is checked against torch's dtypes when the command runs (``commands.torch_dtype``).
    """
    shape_text, _, dtype_name = spec.partition(":")
    if not re.fullmatch(r"\d+([x,]\d+)*", shape_text.strip()):
        raise argparse.ArgumentTypeError(
            f"cannot parse input shape {spec!r}: expected sizes like 1x3x224x224 or 1,3,224,224, "
            "then :DTYPE if not float32"
        )
    return tuple(int(s) for s in re.split(r"[x,]", shape_text.strip())), dtype_name.strip() or "float32"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="See which convolutions conv_rewrite turns into GEMMs, why the others "
        "are left alone, and what it buys. With no command: demo.",
    )
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)
    device: dict[str, Any] = {
        "choices": ("auto", "cpu", "cuda"),
        "default": "auto",
        "help": "where to run (default: CUDA if present)",
    }

    demo = commands.add_parser(
        "demo",
        help="the embedded models: a video DiT, Qwen-VL and VideoMAE patch embeds, "
        "a ViT, and convs that must not be rewritten",
    )
    demo.add_argument("--quick", action="store_true", help="smallest sizes and fewer timed calls")
    demo.add_argument("--device", **device)
    demo.add_argument("--repeats", type=int, help="timed calls per measurement")

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
    return parser


def load_commands() -> ModuleType:
    """The module that runs the commands; importing it imports torch.

    torch 2.13 warns "Failed to initialize NumPy: No module named 'numpy'" while it imports itself where NumPy is not
    installed (``torch.device("cpu")`` in a class body of its functional-tensor module asks the argument
    parser whether NumPy is there), which ``import torch`` alone shows. Torch does not depend on NumPy, and neither
    does this command, so that one warning, and no other, is ignored while torch is imported.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)
        return importlib.import_module(".commands", __package__)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``conv-rewrite`` and ``python -m conv_rewrite``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv or ["demo"])
    try:
        commands = load_commands()
        return commands.run_inspect(args) if args.command == "inspect" else commands.run_demo(args)
    except CliError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
