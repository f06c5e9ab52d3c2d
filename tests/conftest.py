"""Shared fixtures: fresh Dynamo state per test, and Inductor caches off where a test needs the passes to run."""

import pytest
import torch


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
