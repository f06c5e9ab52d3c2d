"""Every example runs as it is, without NumPy and without its warning, and prints what it claims.

On two CPU cores inspect_model takes about 10 s; the others compile for longer and are marked slow.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# torchrun on this machine only: the rendezvous listens on 127.0.0.1. The launcher is torch's own program, which
# warns while importing torch where NumPy is missing: -W silences that in the launcher alone, not in the example.
TORCHRUN = ["-W", "ignore:Failed to initialize NumPy", "-m", "torch.distributed.run", "--nnodes", "1",
            "--nproc_per_node", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0"]  # fmt: skip
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
FAST = {"inspect_model.py"}


@pytest.fixture(scope="module")
def without_numpy(tmp_path_factory) -> Path:
    """A folder that, first on PYTHONPATH, makes ``import numpy`` fail as it does where NumPy is not installed."""
    folder = tmp_path_factory.mktemp("without_numpy")
    (folder / "numpy").mkdir()
    (folder / "numpy" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'numpy'\", name='numpy')\n"
    )
    return folder


@pytest.mark.parametrize(
    "name", [name if name in FAST else pytest.param(name, marks=pytest.mark.slow) for name in sorted(EXAMPLES)]
)
def test_example_runs_and_prints_its_result(name, without_numpy):
    launcher, patterns = EXAMPLES[name]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(without_numpy), str(ROOT)))}
    env.pop("PYTHONWARNINGS", None)
    result = subprocess.run(
        [sys.executable, *launcher, str(ROOT / "examples" / name)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "NumPy" not in result.stderr, result.stderr[-3000:]
    for pattern in patterns:
        assert re.search(pattern, result.stdout), (pattern, result.stdout[-3000:])


def test_every_example_is_tested():
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == sorted(EXAMPLES)
