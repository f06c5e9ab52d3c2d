"""Probe: the exact forms (the conv's contiguous strides at the graph output) of shapes whose rows are not a multiple
of 8, compiled side by side in one process and timed interleaved, plus the kernels of ``backend="conv_rewrite"``.

    python -m bench.probe_forms [--shapes cogvideox_49f,mochi,siglip_so400m] [--out DIR]

Why: the forward of CogVideoX under the backend measured 0.119 ms in one H200 run and 0.180 ms in another with the
same graph (bmm, then the bias added by a pointwise op); this shows which kernel moves and which exact form is best.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tabulate import tabulate

import conv_rewrite

from .shapes import GPU_SHAPES, Shape

Form = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _rows(x: torch.Tensor, k: tuple[int, ...]) -> torch.Tensor:
    b, c, h, w = x.shape
    oh, ow = h // k[0], w // k[1]
    x = x[:, :, : oh * k[0], : ow * k[1]].reshape(b, c, oh, k[0], ow, k[1])
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, oh * ow, c * k[0] * k[1])


def forms(k: tuple[int, ...]) -> dict[str, Form]:
    """Each returns (B, O, oh, ow) with the conv's contiguous strides."""

    def out_sizes(x: torch.Tensor) -> tuple[int, int]:
        return x.shape[2] // k[0], x.shape[3] // k[1]

    def bmm_add(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        r = _rows(x, k)
        w2 = w.reshape(w.shape[0], -1)
        y = torch.bmm(w2.expand(x.shape[0], *w2.shape), r.transpose(1, 2)) + b.view(-1, 1)
        return y.view(x.shape[0], w.shape[0], *out_sizes(x))

    def linear_copy(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        r = _rows(x, k)
        y = F.linear(r, w.reshape(w.shape[0], -1), b)
        return y.transpose(1, 2).contiguous().view(x.shape[0], w.shape[0], *out_sizes(x))

    def bmm_padded_fold(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        r = _rows(x, k)
        length = r.shape[1]
        pad = -length % 8
        r = F.pad(r, (0, 1, 0, pad), value=0.0)
        r[:, :, -1] = 1.0
        w2 = torch.cat([w.reshape(w.shape[0], -1), b.view(-1, 1)], 1)
        y = torch.bmm(w2.expand(x.shape[0], *w2.shape), r.transpose(1, 2))
        return y[:, :, :length].clone().view(x.shape[0], w.shape[0], *out_sizes(x))

    def mm_all_add(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        r = _rows(x, k)
        y = torch.mm(w.reshape(w.shape[0], -1), r.reshape(-1, r.shape[2]).t())  # (O, B*L)
        y = y.view(w.shape[0], x.shape[0], -1).permute(1, 0, 2) + b.view(-1, 1)
        return y.contiguous().view(x.shape[0], w.shape[0], *out_sizes(x))

    return {
        "bmm + add": bmm_add,
        "linear + copy": linear_copy,
        "bmm padded, folded": bmm_padded_fold,
        "mm over B + add": mm_all_add,
    }


def kernels(fn: Callable[[], Any]) -> list[tuple[str, float]]:
    """(kernel name, us per call) of ``fn``, from torch.profiler over 20 calls."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
    rows = [(e.key[:70], e.device_time_total / 20) for e in prof.key_averages() if e.device_time_total > 0]
    return sorted(rows, key=lambda r: -r[1])[:6]


def probe(shape: Shape) -> dict[str, Any]:
    from triton.testing import do_bench_cudagraph

    torch.manual_seed(0)
    conv = nn.Conv2d(shape.x[1], shape.out_channels, shape.kernel, stride=shape.kernel).cuda().bfloat16()
    x = torch.randn(shape.x, device="cuda", dtype=torch.bfloat16)
    w, b = conv.weight.detach(), conv.bias.detach()
    with torch.no_grad():
        want = conv(x)
        fns: dict[str, Callable[[], Any]] = {"cuDNN": lambda: conv(x)}
        inductor = torch.compile(conv)
        fns["inductor conv"] = lambda: inductor(x)
        backend = torch.compile(conv, backend=conv_rewrite.backend(policy="always"))
        fns['backend="conv_rewrite"'] = lambda: backend(x)
        for name, form in forms(shape.kernel).items():
            compiled = torch.compile(form)
            fns[name] = lambda c=compiled: c(x, w, b)
        errors = {}
        for name, fn in fns.items():
            got = fn()
            assert got.stride() == want.stride(), f"{name}: strides {got.stride()} != {want.stride()}"
            errors[name] = (got.float() - want.float()).abs().max().item()
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(3):  # interleaved rounds
            for name, fn in fns.items():
                times[name].append(do_bench_cudagraph(fn, rep=30))
        profiled = {name: kernels(fns[name]) for name in ('backend="conv_rewrite"', "inductor conv")}
    return {"shape": shape.name, "times": times, "errors": errors, "kernels": profiled}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="cogvideox_49f,mochi,siglip_so400m")
    p.add_argument("--out", default=os.environ.get("OUT", "bench_results"))
    args = p.parse_args()
    by_name = {s.name: s for s in GPU_SHAPES}
    results = [probe(by_name[name]) for name in args.shapes.split(",")]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "probe_forms.json"), "w") as f:
        json.dump(results, f, indent=1)
    for r in results:
        print(f"\n{r['shape']}: kernels (us per call)")
        for variant, ks in r["kernels"].items():
            print(" ", variant, "; ".join(f"{n} {t:.1f}" for n, t in ks))
    table = [
        [r["shape"], name, *(f"{t:.3f}" for t in ts), f"{sorted(ts)[1]:.3f}", f"{r['errors'][name]:.3g}"]
        for r in results
        for name, ts in r["times"].items()
    ]
    print(tabulate(table, headers=["shape", "form", "r1", "r2", "r3", "median", "max err"]))


if __name__ == "__main__":
    main()
