"""Does AOTInductor's package load (CUDA) with and without the rewrite? One conv, bf16; prints one line per case."""

import sys
import tempfile

import torch

import conv_rewrite


def main() -> None:
    conv = torch.nn.Conv2d(16, 3072, 2, stride=2).cuda().bfloat16()
    x = torch.randn(13, 16, 60, 90, device="cuda", dtype=torch.bfloat16)
    for name, configs in (("plain", {}), ("rewrite", conv_rewrite.inductor_options(policy="always"))):
        ep = torch.export.export(conv, (x,))
        path = tempfile.mktemp(suffix=".pt2")
        torch._inductor.aoti_compile_and_package(ep, package_path=path, inductor_configs=configs)
        print(name, "compiled", flush=True)
        loaded = torch._inductor.aoti_load_package(path)
        out = loaded(x)
        print(
            name,
            "loaded and ran: max err",
            (out.float() - conv(x).float()).abs().max().item(),
            out.stride(),
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
