"""GPU check of the three entry points on a real-shape Conv3d (Wan 1.3B 480p patch embed), bf16.

Outputs and grads vs cuDNN (relative L2 error; bf16 operands land between 1e-3 and 1e-2), plus the rows rewritten.
Run: python bench/gpu_entry_points.py  (prints a table; writes JSON to $OUT if set)
"""

import json
import os

import torch
import torch.nn as nn
from tabulate import tabulate

import conv_rewrite


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main() -> None:
    torch.manual_seed(0)
    conv = nn.Conv3d(16, 1536, (1, 2, 2), stride=(1, 2, 2)).cuda().to(torch.bfloat16)
    model = nn.Sequential(conv, nn.Flatten(2))
    x = torch.randn(1, 16, 21, 60, 104, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad_out = torch.randn(1, 1536, 21 * 30 * 52, device="cuda", dtype=torch.bfloat16)
    ref = model(x)
    ref_grads = torch.autograd.grad(ref, [x, conv.weight, conv.bias], grad_out)
    forms = {
        "backend()": lambda: torch.compile(model, backend=conv_rewrite.backend()),
        "inductor_options()": lambda: torch.compile(model, options=conv_rewrite.inductor_options()),
        "export + rewrite": lambda: _exported(model, x.detach()),
    }
    rows = []
    for name, build in forms.items():
        torch._dynamo.reset()
        with conv_rewrite.collect_reports() as report, torch._inductor.config.patch(force_disable_caches=True):
            fn = build()
            out = fn(x)
            grads = torch.autograd.grad(out, [x, conv.weight, conv.bias], grad_out) if out.requires_grad else None
        rows.append(
            {
                "form": name,
                "rewritten": len(report.rewritten),
                "out rel err": rel(out, ref),
                "grad x": rel(grads[0], ref_grads[0]) if grads else None,
                "grad w": rel(grads[1], ref_grads[1]) if grads else None,
                "grad b": rel(grads[2], ref_grads[2]) if grads else None,
                "strides equal": out.stride() == ref.stride(),
            }
        )
    info = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }
    print(info)
    print(tabulate(rows, headers="keys", floatfmt=".2e"))
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "gpu_entry_points.json"), "w") as f:
            json.dump({"info": info, "rows": rows}, f, indent=1)


def _exported(model: nn.Module, x: torch.Tensor):
    gm = torch.export.export(model, (x,)).module()
    conv_rewrite.rewrite(gm)
    return gm


if __name__ == "__main__":
    main()
