"""Which *form* should a patchify-conv replacement take?  Times candidate forms, written in plain torch, on GPU.

Each form computes ``conv(x, w, b)`` for a stride == kernel, padding 0 conv as reshape + permute + one GEMM; all but
``free`` hand out the conv's contiguous layout (B, O, o1..oN).  Modes: fwd_out (graph output is the conv-shaped
tensor), fwd_tokens (graph output is ``y.flatten(2).transpose(1, 2)``), train_w / train_wx (compiled function returns
the tokens view, incoming gradient is a contiguous (B, L, O) tensor, ``torch.autograd.grad`` of (w, b) resp. (x, w, b);
``do_bench`` medians, plus CUDA-graph medians for cheap steps), mem (peak and kept memory of one forward under
autograd).

Compiles run in parallel worker processes (one CPU each); timing is serialized across workers by a lock after all
compiles are done, so the GPU and the CPU are quiet while timing.

    python -m bench.forms                      # CUDA, all shapes, JSON and table under $OUT (or ./bench_results)
    python -m bench.forms --device cpu --quick # logic test on tiny shapes
"""

from __future__ import annotations

import os

os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # parallelism comes from our worker processes

import argparse
import gc
import itertools
import json
import math
import multiprocessing as mp
import queue as queue_mod
import statistics
import sys
import time
import traceback
import types
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from bench.shapes import GPU_SHAPES, Shape

EXTRA_SHAPES: tuple[Shape, ...] = (
    Shape("glm4v_16k", "GLM-4V patch embed, 16k patches, bias", (16384, 3, 2, 14, 14), 1536, (2, 14, 14), True),
    Shape("qwen25vl_16k_b", "Qwen2.5-VL 16k patches, WITH bias", (16384, 3, 2, 14, 14), 1280, (2, 14, 14), True),
)
TINY: tuple[Shape, ...] = (
    Shape("tiny3d", "smoke", (2, 4, 3, 8, 8), 32, (1, 2, 2), True),
    Shape("tiny_l1", "smoke L==1", (4, 3, 2, 4, 4), 16, (2, 4, 4), True),
    Shape("tiny1d_b1_crop", "smoke B==1, crop, no bias", (1, 8, 11), 16, (2,), False),
    Shape("tiny2d_crop", "smoke 2d crop bias", (2, 3, 10, 10), 8, (3, 3), True),
)

FORMS = (
    "conv_cudnn",
    "conv_inductor",
    "free",
    "free_clone",
    "wT_bmm",
    "wT_fold",
    "wT_bmm_np",
    "wT_fold_np",
    "wT_baddbmm",
    "linear_view",
    "addmm_b1",
)
SHORT = {
    "conv_cudnn": "cudnn",
    "conv_inductor": "ind",
    "free": "free*",
    "free_clone": "fclone",
    "wT_bmm": "wTbmm",
    "wT_fold": "wTfold",
    "wT_bmm_np": "wTbmmNP",
    "wT_fold_np": "wTfoldNP",
    "wT_baddbmm": "baddbmm",
    "linear_view": "linview",
    "addmm_b1": "addmm1",
}
MODES = ("fwd_out", "fwd_tokens", "train_w", "train_wx")


@dataclass(frozen=True)
class Geom:
    B: int
    C: int
    S: tuple
    k: tuple
    o: tuple
    O: int  # noqa: E741 (B, C, O, K: the notation of the results and of their JSON)
    N: int
    L: int
    K: int
    Kp: int  # K + 1 rounded up to a multiple of 8 (wT_fold)
    bias: bool
    crop: bool


def geom_of(s: Shape) -> Geom:
    B, C, *S = s.x
    o = tuple(si // ki for si, ki in zip(S, s.kernel))
    K = C * math.prod(s.kernel)
    return Geom(
        B,
        C,
        tuple(S),
        tuple(s.kernel),
        o,
        s.out_channels,
        len(S),
        math.prod(o),
        K,
        -(-(K + 1) // 8) * 8,
        s.bias,
        any(si != oi * ki for si, oi, ki in zip(S, o, s.kernel)),
    )


# ---------------------------------------------------------------- forms (x, w, b, g) -> (B, O, o..) or free view


def _rows(x, g):
    if g.crop:
        x = x[(slice(None), slice(None)) + tuple(slice(0, oi * ki) for oi, ki in zip(g.o, g.k))]
    shp = [g.B, g.C]
    for oi, ki in zip(g.o, g.k):
        shp += [oi, ki]
    perm = [0] + [2 + 2 * i for i in range(g.N)] + [1] + [3 + 2 * i for i in range(g.N)]
    return x.view(shp).permute(perm).reshape(g.B, g.L, g.K)


def f_conv(x, w, b, g):
    return (F.conv1d, F.conv2d, F.conv3d)[g.N - 1](x, w, b, stride=g.k)


def f_free(x, w, b, g):
    y = F.linear(_rows(x, g).reshape(-1, g.K), w.reshape(g.O, g.K), b)
    return y.view(g.B, *g.o, g.O).permute(0, g.N + 1, *range(1, g.N + 1))


def f_free_clone(x, w, b, g):
    return f_free(x, w, b, g).clone(memory_format=torch.contiguous_format)


def f_wT_bmm(x, w, b, g):
    y = torch.matmul(w.reshape(g.O, g.K), _rows(x, g).transpose(1, 2))
    if b is not None:
        y = y + b[:, None]
    return y.view(g.B, g.O, *g.o)


def f_wT_fold(x, w, b, g):
    rows = _rows(x, g)
    r = torch.cat([rows, rows.new_ones(g.B, g.L, 1)], 2)
    w2 = torch.cat([w.reshape(g.O, g.K), b[:, None]], 1)
    pad = g.Kp - g.K - 1
    if pad:
        r = F.pad(r, (0, pad))
        w2 = F.pad(w2, (0, pad))
    return torch.matmul(w2, r.transpose(1, 2)).view(g.B, g.O, *g.o)


def f_wT_baddbmm(x, w, b, g):
    rows = _rows(x, g)
    y = torch.baddbmm(
        b.view(1, g.O, 1).expand(g.B, g.O, g.L), w.reshape(g.O, g.K).expand(g.B, g.O, g.K), rows.transpose(1, 2)
    )
    return y.view(g.B, g.O, *g.o)


def f_linear_view(x, w, b, g):
    return F.linear(_rows(x, g).reshape(g.B, g.K), w.reshape(g.O, g.K), b).view(g.B, g.O, *([1] * g.N))


def f_addmm_b1(x, w, b, g):
    r = _rows(x, g)[0]
    w2 = w.reshape(g.O, g.K)
    y = torch.addmm(b[:, None], w2, r.t()) if b is not None else torch.mm(w2, r.t())
    return y.view(1, g.O, *g.o)


BODIES = {
    "conv_cudnn": f_conv,
    "conv_inductor": f_conv,
    "free": f_free,
    "free_clone": f_free_clone,
    "wT_bmm": f_wT_bmm,
    "wT_fold": f_wT_fold,
    "wT_bmm_np": f_wT_bmm,  # same code, compiled with Inductor's mm padding off
    "wT_fold_np": f_wT_fold,
    "wT_baddbmm": f_wT_baddbmm,
    "linear_view": f_linear_view,
    "addmm_b1": f_addmm_b1,
}


def forms_for(g: Geom) -> list[str]:
    fs = ["conv_cudnn", "conv_inductor", "free", "free_clone", "wT_bmm", "wT_bmm_np"]
    if g.bias:
        fs += ["wT_fold", "wT_fold_np", "wT_baddbmm"]
    if g.L == 1:
        fs.append("linear_view")
    if g.B == 1:
        fs.append("addmm_b1")
    return fs


_ctr = itertools.count()


def _fresh(fn):
    """A copy of ``fn`` with its own code object, so Dynamo gives it its own cache (no cross-shape guard chains)."""
    code = fn.__code__.replace(co_name=f"{fn.__code__.co_name}_{next(_ctr)}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


def make_fn(form: str, g: Geom, tokens: bool, backend: str):
    body = BODIES[form]

    def patch_embed(x, w, b):
        y = body(x, w, b, g)
        return y.flatten(2).transpose(1, 2) if tokens else y

    fn = _fresh(patch_embed)
    if form == "conv_cudnn":
        return fn
    if form.endswith("_np") and backend == "inductor":
        return torch.compile(
            fn, dynamic=False, backend=backend, options={"shape_padding": False, "comprehensive_padding": False}
        )
    return torch.compile(fn, dynamic=False, backend=backend)


# ---------------------------------------------------------------- measuring


def _sync(dev):
    if dev == "cuda":
        torch.cuda.synchronize()


def time_fn(fn, dev, graph: bool, rep_ms: float) -> tuple[float, str]:
    if dev != "cuda":
        fn()
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(ts), "wall"
    from triton.testing import do_bench, do_bench_cudagraph

    if graph:
        try:
            return float(do_bench_cudagraph(fn, rep=rep_ms, return_mode="median")), "cudagraph"
        except Exception as e:  # noqa: BLE001
            torch.cuda.synchronize()
            print(f"    cudagraph failed ({type(e).__name__}: {str(e)[:120]}); do_bench", flush=True)
    return float(do_bench(fn, warmup=max(5.0, rep_ms / 4), rep=rep_ms, return_mode="median")), "do_bench"


def same_nonunit(t: torch.Tensor, want) -> bool:
    """Strides equal on every dim of size > 1 (size-1 dims' strides are unobservable by most users)."""
    return all(a == b for a, b, n in zip(t.stride(), want, t.shape) if n != 1)


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    a = a.float()
    d = a - ref
    if not torch.isfinite(a).all():
        return float("inf"), float("inf")
    mx = float(d.abs().max() / ref.abs().max().clamp_min(1e-30))
    nr = float(d.norm() / ref.norm().clamp_min(1e-30))
    return mx, nr


# ---------------------------------------------------------------- one worker


class Budget:
    def __init__(self, t0: float, total: float):
        self.t0, self.total = t0, total

    def left(self) -> float:
        return self.total - (time.time() - self.t0)

    def compile_ok(self, wx: bool = False) -> bool:
        return time.time() - self.t0 < self.total * (0.45 if wx else 0.55)

    def time_ok(self) -> bool:
        return self.left() > 12


def _inputs(s: Shape, g: Geom, dev, seed):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    dt = torch.bfloat16
    x = torch.randn(s.x, generator=gen).to(dev, dt)
    w = (torch.randn((g.O, g.C, *g.k), generator=gen) / math.sqrt(g.K)).to(dev, dt)
    b = (torch.randn(g.O, generator=gen) * 0.5).to(dev, dt) if g.bias else None
    return x, w, b


def prepare_shape(s: Shape, dev: str, backend: str, budget: Budget, log) -> dict:
    """Compile every (form, mode) of one shape, check values, strides and grads, measure memory."""
    g = geom_of(s)
    st: dict = {"shape": s, "g": g, "fns": {}, "checks": [], "records": [], "errors": [], "backend": backend}
    x, w, b = _inputs(s, g, dev, 1)
    st["x"], st["w"], st["b"] = x, w, b
    # fresh inputs for the value checks, fp32 reference (TF32 off)
    xc, wc, bc = _inputs(s, g, dev, 2)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ref = f_conv(xc.float(), wc.float(), None if bc is None else bc.float(), g)
    conv_strides = tuple(f_conv(x, w, b, g).stride())
    tok_strides = tuple(f_conv(x, w, b, g).flatten(2).transpose(1, 2).stride())
    st["conv_strides"], st["tok_strides"] = conv_strides, tok_strides
    forms = forms_for(g)
    st["forms"] = forms
    for form in forms:
        for mode in ("fwd_out", "fwd_tokens"):
            if not budget.compile_ok():
                st["errors"].append(f"{form}/{mode}: skipped (compile deadline)")
                continue
            tokens = mode == "fwd_tokens"
            try:
                fn = make_fn(form, g, tokens, backend)
                t0 = time.perf_counter()
                with torch.no_grad():
                    fn(x, w, b)
                _sync(dev)
                comp = time.perf_counter() - t0
                with torch.no_grad():
                    y = fn(xc, wc, bc)
                _sync(dev)
                r = ref.flatten(2).transpose(1, 2) if tokens else ref
                mx, nr = rel_err(y, r)
                want = tok_strides if tokens else conv_strides
                ok_v = nr < 1e-2 and mx < 2e-2
                ok_s = tuple(y.stride()) == want and tuple(y.shape) == tuple(r.shape)
                st["checks"].append(
                    dict(
                        shape=s.name,
                        form=form,
                        mode=mode,
                        err_max=mx,
                        err_norm=nr,
                        strides=list(y.stride()),
                        want=list(want),
                        values_ok=ok_v,
                        strides_ok=ok_s,
                        strides_ok_nonunit=same_nonunit(y, want),
                        compile_s=comp,
                    )
                )
                if not (ok_v and (ok_s or form == "free")):
                    log(
                        f"  CHECK {s.name} {form} {mode}: values_ok={ok_v} (max {mx:.2e} norm {nr:.2e}) "
                        f"strides {tuple(y.stride())} want {want}" + (" [free: expected]" if form == "free" else "")
                    )
                del y
                st["fns"][(form, mode)] = fn
            except Exception as e:  # noqa: BLE001
                st["errors"].append(f"{form}/{mode}: {type(e).__name__}: {str(e)[:300]}")
                log(f"  ERROR {s.name} {form} {mode}: {type(e).__name__}: {str(e)[:300]}")
                _sync(dev)
    del ref
    st["grad"] = torch.randn(g.B, g.L, g.O, generator=torch.Generator().manual_seed(3)).to(dev, torch.bfloat16)
    prepare_train(st, ("train_w",), dev, budget, log)
    return st


def prepare_train(st: dict, modes, dev: str, budget: Budget, log) -> None:
    """Compile the training modes of one prepared shape (fwd + bwd), check grads; mem for train_w."""
    s, g, x, w, b, grad, forms = st["shape"], st["g"], st["x"], st["w"], st["b"], st["grad"], st["forms"]
    backend = st["backend"]
    xr = x.float().requires_grad_()
    wr = w.float().requires_grad_()
    br = b.float().requires_grad_() if b is not None else None
    out = f_conv(xr, wr, br, g).flatten(2).transpose(1, 2)
    ref_grads = torch.autograd.grad(out, [t for t in (xr, wr, br) if t is not None], grad.float())
    del out, xr, wr, br
    for form in forms:
        for mode in modes:
            if not budget.compile_ok(wx=mode == "train_wx"):
                st["errors"].append(f"{form}/{mode}: skipped (compile deadline)")
                continue
            if form == "wT_baddbmm" and g.B * g.O * g.K * 2 > 4 * 2**30:
                st["errors"].append(
                    f"{form}/{mode}: skipped: backward materializes the expanded weight's grad "
                    f"(B*O*K*2 = {g.B * g.O * g.K * 2 / 2**30:.0f} GiB)"
                )
                continue
            try:
                fn = make_fn(form, g, True, backend)
                wg = w.detach().clone().requires_grad_()
                bg = b.detach().clone().requires_grad_() if b is not None else None
                xg = x.detach().clone().requires_grad_() if mode == "train_wx" else x
                params = [t for t in ((xg if mode == "train_wx" else None), wg, bg) if t is not None]
                t0 = time.perf_counter()
                out = fn(xg, wg, bg)
                grads = torch.autograd.grad(out, params, grad)
                _sync(dev)
                comp = time.perf_counter() - t0
                out = fn(xg, wg, bg)
                grads = torch.autograd.grad(out, params, grad)
                refs = ref_grads if mode == "train_wx" else ref_grads[1:]
                errs = [rel_err(gg, rr) for gg, rr in zip(grads, refs)]
                ok = all(nr < 2e-2 for _, nr in errs)
                names = (["x"] if mode == "train_wx" else []) + ["w"] + (["b"] if b is not None else [])
                st["checks"].append(
                    dict(
                        shape=s.name,
                        form=form,
                        mode=mode,
                        out_strides=list(out.stride()),
                        strides_ok=tuple(out.stride()) == st["tok_strides"],
                        strides_ok_nonunit=same_nonunit(out, st["tok_strides"]),
                        grad_err_norm={n: e[1] for n, e in zip(names, errs)},
                        values_ok=ok,
                        compile_s=comp,
                    )
                )
                if not ok:
                    log(f"  CHECK {s.name} {form} {mode}: grads off {dict(zip(names, [e[1] for e in errs]))}")
                del out, grads
                st["fns"][(form, mode)] = (fn, xg, wg, bg, params)
                if mode == "train_w" and dev == "cuda":  # mem: one forward under autograd, output kept alive
                    torch.cuda.synchronize()
                    gc.collect()
                    before = torch.cuda.memory_allocated()
                    torch.cuda.reset_peak_memory_stats()
                    out = fn(x, wg, bg)
                    torch.cuda.synchronize()
                    peak = torch.cuda.max_memory_allocated() - before
                    kept = torch.cuda.memory_allocated() - before
                    del out
                    st["records"].append(
                        dict(
                            shape=s.name,
                            form=form,
                            mode="mem",
                            peak_mib=peak / 2**20,
                            kept_mib=kept / 2**20,
                            out_mib=g.B * g.L * g.O * 2 / 2**20,
                        )
                    )
            except Exception as e:  # noqa: BLE001
                st["errors"].append(f"{form}/{mode}: {type(e).__name__}: {str(e)[:300]}")
                log(f"  ERROR {s.name} {form} {mode}: {type(e).__name__}: {str(e)[:300]}")
                _sync(dev)
    del ref_grads
    gc.collect()
    if dev == "cuda":
        torch.cuda.empty_cache()


def time_shape(st: dict, dev: str, budget: Budget, log, fwd_rep: float, train_rep: float) -> None:
    s, x, w, b, grad = st["shape"], st["x"], st["w"], st["b"], st["grad"]
    for form in st["forms"]:
        for mode in ("fwd_out", "fwd_tokens"):
            fn = st["fns"].get((form, mode))
            if fn is None:
                continue
            if not budget.time_ok():
                st["errors"].append(f"{form}/{mode}: not timed (deadline)")
                continue
            try:
                with torch.no_grad():
                    ms, how = time_fn(lambda fn=fn: fn(x, w, b), dev, True, fwd_rep)
                st["records"].append(dict(shape=s.name, form=form, mode=mode, ms=ms, how=how))
            except Exception as e:  # noqa: BLE001
                st["errors"].append(f"{form}/{mode} timing: {type(e).__name__}: {str(e)[:200]}")
                _sync(dev)
    for form in st["forms"]:
        for mode in ("train_w", "train_wx"):
            ent = st["fns"].get((form, mode))
            if ent is None:
                continue
            if not budget.time_ok():
                st["errors"].append(f"{form}/{mode}: not timed (deadline)")
                continue
            fn, xg, wg, bg, params = ent

            def step(fn=fn, xg=xg, wg=wg, bg=bg, params=params):  # bound now: the loop rebinds them
                out = fn(xg, wg, bg)
                return torch.autograd.grad(out, params, grad)

            try:
                ms, how = time_fn(step, dev, False, train_rep)
                st["records"].append(dict(shape=s.name, form=form, mode=mode, ms=ms, how=how))
                if dev == "cuda" and budget.time_ok():  # also inside a CUDA graph (no launch/CPU overhead)
                    ms2, how2 = time_fn(step, dev, True, fwd_rep)
                    if how2 == "cudagraph":
                        st["records"].append(dict(shape=s.name, form=form, mode=mode + "_cg", ms=ms2, how=how2))
            except Exception as e:  # noqa: BLE001
                st["errors"].append(f"{form}/{mode} timing: {type(e).__name__}: {str(e)[:200]}")
                _sync(dev)
    # mem of eager conv is measured with the others in prepare (conv_cudnn's train_w fn is eager)


def worker(idx, shapes, dev, backend, t0, total, lock, barrier, q, fwd_rep, train_rep):
    import torch._dynamo

    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    if hasattr(torch._dynamo.config, "accumulated_cache_size_limit"):
        torch._dynamo.config.accumulated_cache_size_limit = 4096
    if hasattr(torch._dynamo.config, "accumulated_recompile_limit"):
        torch._dynamo.config.accumulated_recompile_limit = 4096
    budget = Budget(t0, total)

    def log(msg):
        print(f"[w{idx} {time.time() - t0:6.1f}s] {msg}", flush=True)

    states = []
    for s in shapes:
        ts = time.time()
        try:
            st = prepare_shape(s, dev, backend, budget, log)
            states.append(st)
            ncomp = sum(1 for _ in st["fns"])
            log(f"compiled {s.name}: {ncomp} fns in {time.time() - ts:.1f}s")
        except Exception as e:  # noqa: BLE001
            log(f"PREPARE FAILED {s.name}: {type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}")
            q.put(dict(shape=s.name, records=[], checks=[], errors=[f"prepare: {type(e).__name__}: {str(e)[:300]}"]))
    for st in states:  # x requiring grad: second, so that a slow compile phase drops these first
        ts = time.time()
        try:
            prepare_train(st, ("train_wx",), dev, budget, log)
            log(f"compiled train_wx {st['shape'].name} in {time.time() - ts:.1f}s")
        except Exception as e:  # noqa: BLE001
            log(f"PREPARE train_wx FAILED {st['shape'].name}: {type(e).__name__}: {e}")
    log("compile phase done")
    try:
        barrier.wait(timeout=max(30.0, budget.total * 0.55 - (time.time() - t0) + 120))
    except Exception:  # noqa: BLE001
        log("barrier broken/timeout; timing anyway")
    for st in states:
        with lock:
            ts = time.time()
            try:
                time_shape(st, dev, budget, log, fwd_rep, train_rep)
            except Exception as e:  # noqa: BLE001
                st["errors"].append(f"timing: {type(e).__name__}: {str(e)[:300]}")
            log(f"timed {st['shape'].name} in {time.time() - ts:.1f}s")
        q.put(
            dict(
                shape=st["shape"].name,
                geom=asdict(st["g"]),
                conv_strides=list(st["conv_strides"]),
                tok_strides=list(st["tok_strides"]),
                records=st["records"],
                checks=st["checks"],
                errors=st["errors"],
            )
        )
        st["fns"].clear()
        st.clear()
        gc.collect()
        if dev == "cuda":
            torch.cuda.empty_cache()
    q.put(("done", idx))


# ---------------------------------------------------------------- report


def table(results: dict, modes=("fwd_out", "fwd_tokens", "train_w", "train_w_cg", "train_wx", "train_wx_cg", "mem")):
    lines = []
    for mode in modes:
        key = "peak_mib" if mode == "mem" else "ms"
        hdr = f"{'shape':18s}" + "".join(f"{SHORT[f]:>9s}" for f in FORMS)
        rows = []
        for name, res in results.items():
            vals = {r["form"]: r[key] for r in res.get("records", []) if r["mode"] == mode}
            if not vals:
                continue
            cm = mode[:-3] if mode.endswith("_cg") else mode
            bad = {
                c["form"] for c in res.get("checks", []) if c["mode"] == cm and not c.get("strides_ok_nonunit", True)
            }
            unit = {c["form"] for c in res.get("checks", []) if c["mode"] == cm and not c.get("strides_ok", True)} - bad
            cells = "".join(
                (f"{vals[f]:8.1f}" if mode == "mem" else f"{vals[f]:8.3f}")
                + ("!" if f in bad else "~" if f in unit else " ")
                if f in vals
                else f"{'-':>8s} "
                for f in FORMS
            )
            cand = {f: v for f, v in vals.items() if f not in ("conv_cudnn", "conv_inductor", "free") and f not in bad}
            best = min(cand, key=cand.get) if cand else None
            extra = ""
            if best and mode != "mem":
                bv = cand[best]
                ref_conv = (
                    min(v for f, v in vals.items() if f in ("conv_cudnn", "conv_inductor"))
                    if any(f in vals for f in ("conv_cudnn", "conv_inductor"))
                    else float("nan")
                )
                fr = vals.get("free", float("nan"))
                extra = f"  best={SHORT[best]} conv/best={ref_conv / bv:5.2f}x best/free={bv / fr:5.2f}"
            elif best:
                extra = f"  min={SHORT[best]}" + (
                    f" out={res['records'][0].get('out_mib', 0):.0f}" if res.get("records") else ""
                )
            rows.append(f"{name:18s}{cells}{extra}")
        if rows:
            unit_s = "MiB peak over before (one fwd under autograd, output kept)" if mode == "mem" else "ms median"
            lines.append(
                f"== {mode} ({unit_s}); free* = reference, not the conv layout; ! = strides differ from the "
                "conv's, ~ = only a size-1 dim's stride differs"
            )
            lines.append(hdr)
            lines.extend(rows)
    return "\n".join(lines)


def kept_table(results: dict) -> str:
    lines = ["== mem kept (MiB alive after the forward: output + saved for backward)"]
    lines.append(f"{'shape':18s}" + "".join(f"{SHORT[f]:>9s}" for f in FORMS))
    for name, res in results.items():
        vals = {r["form"]: r["kept_mib"] for r in res.get("records", []) if r["mode"] == "mem"}
        if vals:
            lines.append(f"{name:18s}" + "".join(f"{vals[f]:9.1f}" if f in vals else f"{'-':>9s}" for f in FORMS))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--quick", action="store_true", help="tiny shapes (logic test)")
    ap.add_argument("--shapes", nargs="*", help="shape names")
    ap.add_argument("--workers", type=int, default=0, help="compile processes (default: min(#shapes, cores-4, 12))")
    ap.add_argument("--budget", type=float, default=430.0, help="seconds for the whole run")
    ap.add_argument("--backend", default="inductor")
    ap.add_argument("--fwd-rep", type=float, default=20.0)
    ap.add_argument("--train-rep", type=float, default=40.0)
    ap.add_argument("--out", default=os.environ.get("OUT") or "bench_results")
    a = ap.parse_args(argv)
    t0 = time.time()
    dev = a.device
    allshapes = TINY if a.quick else GPU_SHAPES + EXTRA_SHAPES
    if a.shapes:
        pool = {s.name: s for s in GPU_SHAPES + EXTRA_SHAPES + TINY}
        allshapes = tuple(pool[n] for n in a.shapes)
    os.makedirs(a.out, exist_ok=True)
    info = dict(torch=torch.__version__, python=sys.version.split()[0], device=dev)
    if dev == "cuda":
        import triton

        info.update(
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            gpu=torch.cuda.get_device_name(),
            triton=triton.__version__,
        )
    print("INFO", json.dumps(info), flush=True)
    nw = a.workers or max(1, min(len(allshapes), (os.cpu_count() or 2) - 4, 12))
    nw = min(nw, len(allshapes))
    # heavy-ish shapes first, round-robin
    order = sorted(allshapes, key=lambda s: -(len(forms_for(geom_of(s)))))
    groups = [order[i::nw] for i in range(nw)]
    print(f"{len(allshapes)} shapes on {nw} workers", flush=True)
    ctx = mp.get_context("spawn")
    lock, barrier, q = ctx.Lock(), ctx.Barrier(nw), ctx.Queue()
    procs = [
        ctx.Process(
            target=worker,
            args=(i, groups[i], dev, a.backend, t0, a.budget, lock, barrier, q, a.fwd_rep, a.train_rep),
            daemon=True,
        )
        for i in range(nw)
    ]
    for p in procs:
        p.start()
    results: dict = {}
    done = set()
    jpath = os.path.join(a.out, "forms.json")

    def dump():
        names = [s.name for s in allshapes if s.name in results]
        res = {n: results[n] for n in names}
        with open(jpath, "w") as f:
            json.dump(dict(info=info, shapes={s.name: asdict(s) for s in allshapes}, results=res), f, indent=1)
        txt = table(res) + "\n" + kept_table(res)
        with open(os.path.join(a.out, "forms_table.txt"), "w") as f:
            f.write(txt + "\n")
        return res, txt

    hard_end = t0 + a.budget + 25
    while len(done) < nw and time.time() < hard_end:
        try:
            m = q.get(timeout=2)
        except queue_mod.Empty:
            if not any(p.is_alive() for p in procs):
                break
            continue
        if isinstance(m, tuple):
            done.add(m[1])
            continue
        results[m["shape"]] = m
        dump()
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.terminate()
    res, txt = dump()
    nfree = sum(
        1 for r in res.values() for c in r.get("checks", []) if c["form"] == "free" and not c.get("strides_ok", True)
    )
    print(
        "\n==== checks that failed (values or strides); "
        f"free's layout differs from the conv's in {nfree} checks, as expected"
    )
    for n, r in res.items():
        for c in r.get("checks", []):
            if not c.get("values_ok", True) or not (c.get("strides_ok", True) or c["form"] == "free"):
                print(
                    f"{n:18s} {c['form']:13s} {c['mode']:10s} values_ok={c['values_ok']} "
                    f"nonunit_strides_ok={c.get('strides_ok_nonunit')} "
                    + (
                        f"err={c['err_norm']:.1e} strides={c['strides']} want={c['want']}"
                        if "want" in c
                        else f"strides={c['out_strides']} want={r['tok_strides']} grad_err="
                        + ",".join(f"{k}:{v:.1e}" for k, v in c["grad_err_norm"].items())
                    )
                )
        for e in r.get("errors", []):
            print(f"{n:18s} ERROR {e}")
    missing = [s.name for s in allshapes if s.name not in res]
    if missing:
        print("MISSING shapes:", missing)
    print("INFO", json.dumps(info))
    print(txt)
    print(f"total {time.time() - t0:.1f}s; json {jpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
