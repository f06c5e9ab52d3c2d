"""``python -m bench.gap``: ideas for closing the gap to the bare-GEMM floor where the input is large next to the GEMM.

Forward only, CUDA, each idea producing the model's (B, L, D) tokens, checked against the float32 conv and timed in
CUDA graphs. Ideas: the rewrite's ``contiguous_output=True`` form; Inductor max-autotune with and without prologue
fusion (the permute fused into the Triton mm template's loads); a dedicated Triton implicit-patchify GEMM.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tabulate import tabulate

import conv_rewrite

from .config import RunConfig
from .ops import describe, make_conv, patch_rows, reference, rel_err
from .shapes import shapes_for
from .timing import cuda_time
from .variants import MAX_AUTOTUNE, HandPatchify, Tokens

SHAPES = ("videomae_b", "wan14b_720p", "vit_b16_224", "clip_l14_336", "vjepa2_l", "wav2vec2_l5")
AUTOTUNED = ("videomae_b",)
PROLOGUE_ONLY = ("vit_b16_224", "clip_l14_336")
CONV_LAYOUT = ("videomae_b", "wan14b_720p")


class ContiguousForm(torch.nn.Module):
    """The library's ``contiguous_output=True`` form (weight @ patches^T), then the model's consumer."""

    def __init__(self, conv: torch.nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = conv_rewrite.patchify_conv(x, self.conv.weight, self.conv.bias, contiguous_output=True)
        return y.flatten(2).transpose(1, 2)


class MatmulPlusBias(torch.nn.Module):
    """Conv layout from weight @ patches, the bias as a separate add (instead of baddbmm's expanded bias)."""

    def __init__(self, conv: torch.nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = conv_rewrite.patchify_conv(x, self.conv.weight, None, contiguous_output=True)
        bias = self.conv.bias
        return y if bias is None else y + bias.view(-1, *([1] * (y.dim() - 2)))


class FreeThenContiguous(torch.nn.Module):
    """Conv layout from the free form (bias in the GEMM epilogue), then one transposing copy."""

    def __init__(self, conv: torch.nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_rewrite.patchify_conv(x, self.conv.weight, self.conv.bias).contiguous()


Ideas = dict[str, Callable[[torch.nn.Module], Callable[..., Any]]]


def conv_layout_ideas(shape_name: str) -> Ideas:
    """Where the conv's own (contiguous) layout is observed, e.g. a graph output: ways to produce it."""
    ma = torch._inductor.list_mode_options(MAX_AUTOTUNE)
    out: Ideas = {
        "[conv layout] rewrite backend (baddbmm)": lambda c: torch.compile(c, backend="conv_rewrite"),
        "[conv layout] matmul + bias add": lambda c: torch.compile(MatmulPlusBias(c)),
        "[conv layout] free form + .contiguous()": lambda c: torch.compile(FreeThenContiguous(c)),
        "[conv layout] free view, layout not kept (lower bound)": lambda c: torch.compile(HandPatchify(c)),
    }
    if shape_name == "wan14b_720p":
        out["[conv layout] matmul + bias add, max-autotune"] = lambda c: torch.compile(MatmulPlusBias(c), options=ma)
    return out


def ideas(shape_name: str) -> Ideas:
    ma = torch._inductor.list_mode_options(MAX_AUTOTUNE)
    out: Ideas = {
        "hand (free view)": lambda c: torch.compile(Tokens(HandPatchify(c))),
        "rewrite backend": lambda c: torch.compile(Tokens(c), backend="conv_rewrite"),
        "contiguous_output=True": lambda c: torch.compile(ContiguousForm(c)),
    }
    if shape_name in PROLOGUE_ONLY:
        out["hand max-autotune (prologue fusion on)"] = lambda c: torch.compile(
            Tokens(HandPatchify(c)), options=ma | {"prologue_fusion": True}
        )
    if shape_name in AUTOTUNED:
        out |= {
            "hand max-autotune, prologue fusion off": lambda c: torch.compile(
                Tokens(HandPatchify(c)), options=ma | {"prologue_fusion": False}
            ),
            "hand max-autotune, prologue fusion on": lambda c: torch.compile(
                Tokens(HandPatchify(c)), options=ma | {"prologue_fusion": True}
            ),
            "hand max-autotune, Triton mm only, prologue on": lambda c: torch.compile(
                Tokens(HandPatchify(c)), options=ma | {"prologue_fusion": True, "max_autotune_gemm_backends": "TRITON"}
            ),
        }
    return out


def first_call(call: Callable[[], Any], compiled: bool) -> tuple[Any, str]:
    """Run the call that compiles; for compiled ideas also name the kernels Inductor's generated code launches."""
    if not compiled:
        return call(), ""
    from torch._inductor.utils import run_and_get_code

    out, codes = run_and_get_code(call)
    calls = re.findall(r"(triton_\w+)\.run\(|(extern_kernels\.\w+)\(", "\n".join(codes))
    return out, ", ".join(re.sub(r"_\d+$", "", a or b) for a, b in calls) or "?"


def run(shape_name: str, cfg: RunConfig) -> list[dict[str, Any]]:
    shape = shapes_for("cuda", False, [shape_name])[0]
    torch.manual_seed(0)
    conv = make_conv(shape, cfg)
    x = torch.randn(shape.x, device="cuda", dtype=cfg.torch_dtype)
    ref = reference(conv, x, tokens=True)
    ref_conv = reference(conv, x, tokens=False) if shape_name in CONV_LAYOUT else None
    rows = []
    rows_in = patch_rows(x, shape.kernel)
    w2 = conv.weight.detach().reshape(shape.out_channels, -1)
    from .implicit_gemm import patchify_gemm

    candidates: dict[str, Callable[[], Any]] = {
        "floor (GEMM on pre-patchified rows)": lambda: F.linear(rows_in, w2, conv.bias).view(ref.shape)
    }
    compiled = ideas(shape_name) | (conv_layout_ideas(shape_name) if ref_conv is not None else {})
    for name, make in compiled.items():
        candidates[name] = functools.partial(make(conv), x)
    candidates["triton implicit-patchify GEMM"] = lambda: patchify_gemm(x, conv.weight, conv.bias)
    torch._dynamo.reset()
    with torch.no_grad():
        for name, call in candidates.items():
            row: dict[str, Any] = {"shape": shape_name, "gemm": shape.gemm, "idea": name}
            try:
                start = time.perf_counter()
                out, row["kernels"] = first_call(call, name in compiled)
                torch.cuda.synchronize()
                row["first_call_s"] = round(time.perf_counter() - start, 2)
                row["err"] = rel_err(out, ref_conv if name.startswith("[conv layout]") else ref)
                row["contiguous"] = out.is_contiguous()
                row["ms"], row["method"] = cuda_time(call, cfg.rep_ms, graph=True)
            except Exception as exc:  # an idea that fails is a result too
                row["error"] = describe(exc)
            rows.append(row)
    floor = rows[0].get("ms")
    for row in rows:
        row["over_floor"] = row["ms"] / floor if floor and "ms" in row else None
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gap", description=__doc__)
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--out", default="bench_results")
    p.add_argument("--deadline", type=float, default=3600.0, help="seconds; shapes not started by then are skipped")
    args = p.parse_args(argv)
    cfg = RunConfig(device="cuda", dtype="bf16", rep_ms=40.0)
    from .config import setup_torch

    setup_torch(RunConfig(device="cuda", cold_compile=False))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    begin = time.perf_counter()
    for name in args.shapes.split(","):
        start = time.perf_counter()
        if start - begin > args.deadline:
            print(f"{name}: skipped (deadline)", flush=True)
            continue
        rows += run(name, cfg)
        print(f"{name}: {start - begin + (time.perf_counter() - start):.1f} s", flush=True)
        (Path(args.out) / "gap.json").write_text(json.dumps(rows, indent=1, default=str))
    body = [
        [
            r["shape"],
            r["idea"],
            f"{r['ms']:.4f}" if "ms" in r else "ERR",
            f"{r['over_floor']:.2f}" if r.get("over_floor") else "-",
            f"{r['err']:.1e}" if "err" in r else "-",
            (r.get("error") or r.get("kernels", ""))[:90],
        ]
        for r in rows
    ]
    print(tabulate(body, headers=["shape", "idea", "ms", "/ floor", "err", "kernels"], tablefmt="github"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
