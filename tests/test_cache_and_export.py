"""Inductor's caches keep working with the pass; torch.export and AOTInductor flows lose the conv, keep the values."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from models import MixedConvs, mixed_inputs

import conv_rewrite
import conv_rewrite.compile

COMPILE_TWICE = textwrap.dedent(
    """
    import json, torch
    import conv_rewrite
    from torch._dynamo.utils import counters
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv3d(4, 8, (1, 2, 2), stride=(1, 2, 2)), torch.nn.Flatten(2))
    out = torch.compile(model, options=conv_rewrite.inductor_options())(torch.randn(1, 4, 3, 8, 8))
    print(json.dumps({k: dict(v) for k, v in counters.items() if k in ("inductor", "aot_autograd")}))
    """
)


def _compile_in_fresh_process(cache_dir):
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache_dir)}
    env.pop("TORCHINDUCTOR_FORCE_DISABLE_CACHES", None)
    done = subprocess.run(
        [sys.executable, "-c", COMPILE_TWICE], env=env, capture_output=True, text=True, timeout=300, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_second_identical_compile_in_a_fresh_process_hits_the_cache(tmp_path):
    first = _compile_in_fresh_process(tmp_path)
    second = _compile_in_fresh_process(tmp_path)
    assert first["inductor"].get("fxgraph_cache_miss", 0) >= 1
    assert first["inductor"].get("fxgraph_cache_bypass", 0) == 0
    hits = second["inductor"].get("fxgraph_cache_hit", 0) + second.get("aot_autograd", {}).get("autograd_cache_hit", 0)
    assert hits >= 1
    assert second["inductor"].get("fxgraph_cache_bypass", 0) == 0
    assert second["inductor"].get("fxgraph_cache_miss", 0) == 0


def test_uuid_changes_with_options():
    always = conv_rewrite.compile.ConvRewritePass(conv_rewrite.Options(policy="always")).uuid()
    never = conv_rewrite.compile.ConvRewritePass(conv_rewrite.Options(policy="never")).uuid()
    assert always and never and always != never
    assert conv_rewrite.compile.ConvRewritePass().uuid() == always


def _no_convolution(gm, kept):
    convs = [n for n in gm.graph.nodes if "conv" in str(n.target)]
    assert len(convs) == kept, [str(n.target) for n in convs]


def test_export_then_rewrite_then_run():
    model = MixedConvs()
    inputs = mixed_inputs()
    for ep in (torch.export.export(model, inputs), torch.export.export(model, inputs).run_decompositions()):
        gm = ep.module()
        report = conv_rewrite.rewrite(gm)
        assert {r.module for r in report.rewritten} == {"patch_embedding", "tokens"}
        _no_convolution(gm, kept=3)
        for out, ref in zip(gm(*inputs), model(*inputs)):
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
            assert out.stride() == ref.stride()
        torch.export.export(gm, inputs)


def test_aten_pattern_pass_on_an_exported_graph():
    model = MixedConvs()
    inputs = mixed_inputs()
    gm = torch.export.export(model, inputs).run_decompositions().module()
    report = conv_rewrite.compile.AtenConvRewritePass().apply(gm)
    assert {r.module for r in report.rewritten} == {"patch_embedding", "tokens"}
    assert {r.reason for r in report.skipped} == {
        "stride (1, 1) != kernel (3, 3)",
        "groups 2",
        "stride (2) != kernel (4)",
    }
    _no_convolution(gm, kept=3)
    for out, ref in zip(gm(*inputs), model(*inputs)):
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_aoti_compile_and_package_loads_and_matches(tmp_path, no_inductor_cache):
    model = torch.nn.Sequential(
        torch.nn.Conv3d(4, 8, (1, 2, 2), stride=(1, 2, 2)), torch.nn.Flatten(2), torch.nn.GELU()
    )
    inputs = (torch.randn(1, 4, 3, 8, 8),)
    ep = torch.export.export(model, inputs)
    with conv_rewrite.collect_reports() as report:
        path = torch._inductor.aoti_compile_and_package(
            ep, package_path=str(tmp_path / "m.pt2"), inductor_configs=conv_rewrite.inductor_options()
        )
    assert [r.module for r in report.rewritten] == ["0"]
    loaded = torch._inductor.aoti_load_package(path)
    torch.testing.assert_close(loaded(*inputs), model(*inputs), atol=1e-5, rtol=1e-5)


def test_a_cached_compile_of_a_converted_model_is_not_served_to_another_version(tmp_path, monkeypatch):
    """AOTAutograd's cache keys on the Dynamo graph, which holds the converted conv as one op whose decomposition is
    this package's Python: the op's call carries a hash of that code, so a changed library misses the cache."""
    from torch._dynamo.utils import counters

    import conv_rewrite.convert

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_FORCE_DISABLE_CACHES", raising=False)
    conv = torch.nn.Conv2d(3, 8, 2, stride=2)
    conv_rewrite.convert_(conv, policy="always")
    x = torch.randn(2, 3, 8, 8)

    def compile_and_count() -> dict:
        torch._dynamo.reset()
        counters.clear()
        torch.compile(conv)(x).sum().backward()
        return dict(counters["aot_autograd"])

    with torch._inductor.config.patch(force_disable_caches=False, fx_graph_cache=True):
        assert compile_and_count().get("autograd_cache_miss", 0) == 1
        assert compile_and_count().get("autograd_cache_hit", 0) == 1  # the same code: served from the cache
        monkeypatch.setattr(conv_rewrite.convert, "_SOURCE", "another version")
        changed = compile_and_count()
    assert changed.get("autograd_cache_miss", 0) == 1 and not changed.get("autograd_cache_hit", 0)
