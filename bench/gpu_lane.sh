#!/usr/bin/env bash
# The GPU test lane: tests/test_gpu_lane.py on CUDA (every entry point on the real shapes, bf16/fp16/fp32: values,
# strides, gradients). Run from anywhere on the GPU machine: bash bench/gpu_lane.sh
# Writes the versions and pytest's output to $OUT/gpu_lane.log (OUT defaults to bench_results/); expected ~5-6 min
# on one H200. Its exit status is pytest's.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench_results}"
mkdir -p "$OUT"
LOG="$OUT/gpu_lane.log"

# backend="conv_rewrite" by name needs the package's entry point; a bare checkout (no egg-info) has none.
if ! python -c 'import sys; from importlib.metadata import entry_points
sys.exit(not any(e.name == "conv_rewrite" for e in entry_points(group="torch_dynamo_backends")))'; then
    echo "registering the conv_rewrite backend: pip install --no-deps --no-build-isolation -e ." | tee "$LOG"
    python -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -3 | tee -a "$LOG"
fi

python - 2>&1 <<'EOF' | tee -a "$LOG"
import platform
import subprocess

import torch

print("python", platform.python_version())
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| cuDNN", torch.backends.cudnn.version())
try:
    import triton

    print("triton", triton.__version__)
except ImportError:
    print("triton: not installed")
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"GPU {i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}")
else:
    print("GPU: none (CUDA not available): the lane will fail")
try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout.strip()
    print("conv_rewrite", commit or "(no git)", "+ uncommitted changes" if dirty else "")
except OSError:
    print("conv_rewrite (no git)")
EOF

python -m pytest -q -p no:cacheprovider tests/test_gpu_lane.py --device cuda -rA --durations=30 2>&1 | tee -a "$LOG"
exit "${PIPESTATUS[0]}"
