"""Model level: one architecture under one variant, forward and forward+backward end to end, checked and timed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

import conv_rewrite

from .config import RunConfig
from .models import spec_named
from .ops import FWD, STEP, describe, rel_err
from .timing import cpu_time, cuda_time, timed_first_call
from .variants import model_variants


def prepare_model(name: str, variant_name: str, cfg: RunConfig) -> Callable[[], list[dict[str, Any]]]:
    """Compile and check one model under one variant now; the returned function times it, one row per mode.

    The eager model in the run's dtype is the reference (a float32 copy of a 32k-token model would not fit attention
    everywhere); gradients are over every parameter.
    """
    spec = spec_named(name, cfg.device, cfg.quick)
    variant = next(v for v in model_variants() if v.name == variant_name)
    torch.manual_seed(0)
    with torch.device(cfg.device):
        model = spec.build()
    model = model.to(cfg.torch_dtype)
    inputs = spec.inputs(cfg.device, cfg.torch_dtype)
    with torch.no_grad():
        ref = model(*inputs).float()
    params = [p for p in model.parameters() if p.requires_grad]
    grad_out = torch.randn(ref.shape, device=cfg.device, dtype=cfg.torch_dtype)
    base = {
        "kind": "model",
        "case": name,
        "source": spec.source,
        "variant": variant_name,
        "compiled": variant.compiled,
        "params_m": round(sum(p.numel() for p in params) / 1e6, 1),
    }
    fn = variant.make(model)

    def forward() -> Any:
        return fn(*inputs)

    def step() -> Any:
        return torch.autograd.grad(fn(*inputs), params, grad_out)

    info: dict[str, Any] = {}
    try:
        with conv_rewrite.collect_reports() as report:
            with torch.no_grad():
                out, info["compile_fwd_s"] = timed_first_call(forward, cfg.device)
            _, info["compile_step_s"] = timed_first_call(step, cfg.device)
        info["rewritten"] = len(report.rewritten)
        info["err"] = rel_err(out, ref)
        info["ok"] = info["err"] <= 3 * cfg.tolerance
        del out
    except Exception as exc:  # reported in the results; the other variants still run
        info["error"] = describe(exc)
    del ref

    def time_all() -> list[dict[str, Any]]:
        rows = []
        for mode, call in ((FWD, forward), (STEP, step)):
            row = base | info | {"mode": mode}
            if "error" not in info:
                try:
                    with torch.set_grad_enabled(mode == STEP):
                        row["ms"], row["method"] = (
                            cuda_time(call, cfg.model_rep_ms, graph=False)
                            if cfg.device == "cuda"
                            else cpu_time(call, cfg.model_rep_ms)
                        )
                except Exception as exc:
                    row["error"] = describe(exc)
            rows.append(row)
        return rows

    return time_all
