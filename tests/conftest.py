"""Shared fixtures: this checkout's conv_rewrite first on the path, fresh Dynamo state per test, Inductor caches off
where a test needs the passes to run, and a private cache for policy "auto".
"""

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# The tests pin what the rewrite does to each conv; policy "auto" would make that depend on this machine's timings.
# tests/test_policy.py exercises "auto" explicitly.
os.environ["CONV_REWRITE_POLICY"] = "always"


def pytest_addoption(parser):
    parser.addoption(
        "--device",
        default="cpu",
        help="device of the device-aware tests (tests/test_gpu_lane.py): cpu (default, CI) or cuda (the GPU lane)",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs CUDA; collected only with --device cuda (the GPU test lane)")
    config.addinivalue_line(
        "markers", "slow: starts processes or compiles whole programs (> 20 s); .ci/run runs them, -m 'not slow' skips"
    )


@pytest.fixture(scope="session")
def device(request):
    """The device given by --device. Asking for CUDA where there is none fails the tests rather than skipping them."""
    name = request.config.getoption("--device")
    if torch.device(name).type == "cuda" and not torch.cuda.is_available():
        pytest.fail(f"--device {name}: CUDA is not available here (torch {torch.__version__})")
    return name


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def no_inductor_cache():
    """Inductor's caches skip the passes on a hit; tests that read the pass's report need them to run."""
    with torch._inductor.config.patch(force_disable_caches=True):
        yield


@pytest.fixture(autouse=True)
def _autotune_cache(tmp_path, monkeypatch):
    """Policy "auto" writes its measurements here, never into the user's cache."""
    monkeypatch.setenv("CONV_REWRITE_CACHE_DIR", str(tmp_path / "conv_rewrite_cache"))
