"""Every example runs as it is (each well under a minute on two CPU cores) and prints what it claims."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# torchrun on this machine only: the rendezvous listens on 127.0.0.1.
TORCHRUN = ["-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", "127.0.0.1:0"]  # fmt: skip
EXAMPLES = {
    "video_dit_backend.py": (
        [],
        [r"latent frames 5: max abs err vs eager \d", r"Dynamo graphs for 2 frame counts: 1\n"],
    ),
    "train_tiny.py": ([], [r"max grad err vs eager \d", r"rewritten: 1 of 1 conv\(s\)"]),
    "inspect_model.py": ([], [r"1 of 2 conv\(s\) rewritten, 1 skipped in 2 graph\(s\)", r"GEMM M=64 K=384 N=32"]),
    "export_rewrite.py": (
        [],
        [r"exported \+ rewritten: max abs err vs eager \d", r"AOTInductor: compiled and loaded in .* 1 of 1 conv"],
    ),
    "train_fsdp2.py": (
        TORCHRUN,
        [r"world size 2 \(gloo\)", r"grads vs eager fp32 run, .*: patch_embed.proj.weight \d"],
    ),
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs_and_prints_its_result(name):
    launcher, patterns = EXAMPLES[name]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, *launcher, str(ROOT / "examples" / name)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for pattern in patterns:
        assert re.search(pattern, result.stdout), (pattern, result.stdout[-3000:])


def test_every_example_is_tested():
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == sorted(EXAMPLES)
