"""The conv-rewrite command: fast help and usage errors, the default policy, honest timings, one-line errors, and no
warning where NumPy is not installed (as in the quick start's fresh venv)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from conv_rewrite.tools import cli, commands
from conv_rewrite.tools.compare import Comparison, Timing
from conv_rewrite.tools.demo_models import DemoCase
from conv_rewrite.tools.explain import Explanation

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
SUMMARY_MODELS = {"video_dit", "qwen_vl_patch_embed", "videomae_embed", "vit", "not_patchify"}


def patch_embed_and_padded() -> nn.Module:
    """A factory for ``inspect``: a Wan-style patch embed Conv3d, then a padded Conv3d."""
    return nn.Sequential(nn.Conv3d(4, 8, kernel_size=(1, 2, 2), stride=(1, 2, 2)), nn.Conv3d(8, 8, 3, padding=1))


def broken_factory() -> nn.Module:
    raise ValueError("no weights here")


@pytest.fixture(scope="module")
def without_numpy(tmp_path_factory) -> Path:
    """A folder that, first on PYTHONPATH, makes ``import numpy`` fail as it does where NumPy is not installed."""
    folder = tmp_path_factory.mktemp("without_numpy")
    (folder / "numpy").mkdir()
    (folder / "numpy" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'numpy'\", name='numpy')\n"
    )
    return folder


def run(*args: str, python_path: Path | None = None, timeout: float = 120, flags=()) -> subprocess.CompletedProcess:
    """``python -m conv_rewrite ARGS`` from this folder, on this checkout, with the library's default policy
    (conftest sets CONV_REWRITE_POLICY for the tests) and every warning shown; ``python_path`` goes first."""
    env = {k: v for k, v in os.environ.items() if k not in ("CONV_REWRITE_POLICY", "PYTHONWARNINGS")}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (python_path, ROOT) if p is not None)
    return subprocess.run(
        [sys.executable, *flags, "-m", "conv_rewrite", *args],
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _summary(stdout: str) -> dict[str, list[str]]:
    """The summary table's cells by model name (columns split on runs of two or more spaces)."""
    lines = stdout[stdout.index("\nsummary (") :].splitlines()[4:]
    cells = [[cell for cell in line.split("  ") if cell.strip()] for line in lines if line.strip()]
    return {row[0].strip(): [cell.strip() for cell in row[1:]] for row in cells}


@pytest.mark.parametrize(
    "args, code, out",
    [
        (["--help"], 0, "usage: conv-rewrite"),
        (["inspect", "--help"], 0, "MODULE:FACTORY"),
        (["inspect"], 2, "the following arguments are required: MODULE:FACTORY, --input"),
        (["inspect", "m:f", "--input", "1xx8"], 2, "cannot parse input shape '1xx8'"),
        (["demo", "--device", "tpu"], 2, "invalid choice: 'tpu'"),
    ],
)
def test_help_and_usage_errors_answer_without_importing_torch(args, code, out):
    result = run(*args, flags=["-X", "importtime"], timeout=30)
    lines = result.stderr.splitlines()
    imported = {line.rpartition("|")[2].strip() for line in lines if line.startswith("import time")}
    assert result.returncode == code
    assert out in result.stdout + result.stderr
    assert not {name for name in imported if name.split(".")[0] in ("torch", "tabulate")}


@pytest.mark.slow
def test_demo_quick_runs_on_cpu_with_the_default_policy_quietly_without_numpy(without_numpy):
    result = run("demo", "--quick", "--device", "cpu", python_path=without_numpy, timeout=400)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    assert "policy 'auto' (the default" in result.stdout.splitlines()[0]
    summary = _summary(result.stdout)
    assert set(summary) == SUMMARY_MODELS
    for name, (convs, _err, numerics, eager, compiled, rewritten, verdict) in summary.items():
        assert numerics == "ok" and convs.endswith("/4" if name == "not_patchify" else "/1")
        assert all(" (" in cell for cell in (eager, compiled)), (name, eager, compiled)
        if convs.startswith("0/"):  # nothing changed: nothing timed, nothing claimed
            assert (rewritten, verdict) == ("(as compiled)", "no change (no conv rewritten)")
        else:
            assert " (" in rewritten
            assert verdict == "no clear difference" or verdict.endswith(("x faster", "x slower"))
    assert summary["not_patchify"][0] == "0/4"
    assert "video_dit: torch.compile + conv_rewrite ... done in" in result.stderr


def test_no_command_means_demo(monkeypatch):
    seen = []
    monkeypatch.setattr(commands, "run_demo", lambda args: seen.append((args.command, args.quick, args.device)) or 0)
    assert cli.main([]) == 0
    assert seen == [("demo", False, "auto")]


def test_demo_uses_the_library_default_policy(monkeypatch, capsys):
    monkeypatch.delenv("CONV_REWRITE_POLICY")
    seen = []
    case = DemoCase("conv", "one patch conv", lambda: nn.Conv2d(3, 4, 2, 2), (1, 3, 4, 4), convs=1, patchify=1)
    monkeypatch.setattr(commands, "demo_cases", lambda device, quick: [case])
    timing = Timing(1.0, 0.9, 1.1, 2)

    def fake_compare(model, inputs, *, repeats, options, progress):
        seen.append(options.policy)
        return Comparison(timing, timing, None, 0, 0.0, True)

    monkeypatch.setattr(commands, "compare", fake_compare)
    assert cli.main(["demo", "--device", "cpu", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert seen == ["auto"] and "policy 'auto' (the default" in out
    assert "always" not in out


@pytest.mark.parametrize(
    "compiled, rewritten, verdict",
    [
        (Timing(2.0, 1.9, 2.1, 20), None, "no change (no conv rewritten)"),
        (Timing(2.0, 1.0, 3.0, 20), Timing(1.0, 0.5, 1.5, 20), "no clear difference"),
        (Timing(2.0, 1.9, 2.1, 20), Timing(1.0, 0.9, 1.1, 20), "2.00x faster"),
        (Timing(1.0, 0.9, 1.1, 20), Timing(2.0, 1.9, 2.1, 20), "2.00x slower"),
    ],
)
def test_a_speedup_is_claimed_only_where_the_rewrite_changed_something_and_the_ranges_part(
    compiled, rewritten, verdict
):
    comparison = Comparison(compiled, compiled, rewritten, 0 if rewritten is None else 1, 0.0, True)
    assert comparison.verdict == verdict
    assert (comparison.speedup is None) == (not verdict.endswith(("faster", "slower")))
    row = commands.summary_row("m", Explanation(), comparison)
    assert row[-1] == verdict and row[-2] == (str(rewritten) if rewritten else "(as compiled)")


def test_timing_is_the_median_and_interquartile_range():
    timing = Timing.of([s / 1e3 for s in (5, 1, 2, 3, 4)])
    assert (timing.median, timing.q1, timing.q3, timing.calls) == (3.0, 2.0, 4.0, 5)
    assert str(timing) == "3.00 (2.00-4.00)"
    assert Timing.of([0.001]) == Timing(1.0, 1.0, 1.0, 1)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("1x16x5x32x32:float32", ((1, 16, 5, 32, 32), "float32")),
        ("1,16,5,32,32", ((1, 16, 5, 32, 32), "float32")),
        ("2x3:bfloat16", ((2, 3), "bfloat16")),
        ("7:int64", ((7,), "int64")),
    ],
)
def test_parse_input(spec, expected):
    assert cli.parse_input(spec) == expected


def test_inspect_prints_table_and_writes_json_and_graphs_quietly_without_numpy(tmp_path, without_numpy):
    report, graphs = tmp_path / "report.json", tmp_path / "graphs"
    args = ["inspect", "test_cli:patch_embed_and_padded", "--input", "2x4x3x8x8", "--policy", "always", "--no-bench"]
    result = run(*args, "--json", str(report), "--graphs", str(graphs), python_path=without_numpy)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "1 of 2 conv(s) rewritten, 1 skipped in 1 graph(s)" in result.stdout
    explanation = Explanation.from_json(report.read_text())
    assert [(r.module, r.decision, r.reason, r.gemm) for r in explanation] == [
        ("0", "rewritten", "stride == kernel (1, 2, 2)", (2 * 3 * 4 * 4, 4 * 4, 8)),
        ("1", "skipped", "stride (1, 1, 1) != kernel (3, 3, 3)", None),
    ]
    before, after = (graphs / "graph_0.before.py").read_text(), (graphs / "graph_0.after.py").read_text()
    assert before.count("torch.conv3d(") == 2 and after.count("torch.conv3d(") == 1 and "patchify_conv" in after


@pytest.mark.slow
def test_inspect_checks_numerics_and_times_with_the_default_policy():
    result = run("inspect", "test_cli:patch_embed_and_padded", "--input", "2x4x3x8x8", "--repeats", "5")
    assert result.returncode == 0, result.stderr
    assert "policy 'auto' (the default" in result.stdout
    assert "compiled + rewrite vs eager: max abs err" in result.stdout and "(ok)" in result.stdout
    (convs, _err, numerics, *_times, verdict) = _summary(result.stdout)["test_cli:patch_embed_and_padded"]
    assert convs in ("0/2", "1/2") and numerics == "ok"
    if convs == "0/2":
        assert verdict == "no change (no conv rewritten)"
    else:
        assert verdict == "no clear difference" or verdict.endswith(("x faster", "x slower"))


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["inspect", "no_such_module:build", "--input", "1x4x2x8x8"], 2, "cannot import 'no_such_module'"),
        (["inspect", "test_cli:missing", "--input", "1x4x2x8x8"], 2, "module 'test_cli' has no callable 'missing'"),
        (["inspect", "test_cli", "--input", "1x4x2x8x8"], 2, "expected MODULE:FACTORY"),
        (
            ["inspect", "test_cli:broken_factory", "--input", "1x4x2x8x8"],
            1,
            "test_cli:broken_factory() failed: ValueError: no weights here",
        ),
        (
            ["inspect", "test_cli:patch_embed_and_padded", "--input", "1x4x2xx8"],
            2,
            "cannot parse input shape '1x4x2xx8'",
        ),
        (["inspect", "test_cli:patch_embed_and_padded", "--input", "1x4x2x8x8:float33"], 2, "unknown dtype 'float33'"),
        (
            ["inspect", "test_cli:patch_embed_and_padded", "--input", "1x5x2x8x8"],
            1,
            "the model failed on input (1, 5, 2, 8, 8) float32: RuntimeError:",
        ),
    ],
)
def test_errors_exit_nonzero_with_one_line(args, code, message, capsys, monkeypatch):
    monkeypatch.chdir(HERE)
    try:
        returned = cli.main([*args, "--no-bench"])
    except SystemExit as exit:  # argparse's usage errors
        returned = exit.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert returned == code
    assert len(lines) == 1 and message in lines[0], lines


def test_model_failure_from_the_shell_is_one_line_without_traceback(without_numpy):
    result = run("inspect", "test_cli:patch_embed_and_padded", "--input", "1x5x2x8x8", python_path=without_numpy)
    assert result.returncode == 1
    assert result.stderr.startswith("conv-rewrite: error: the model failed on input (1, 5, 2, 8, 8) float32: ")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_random_input_has_the_asked_dtype():
    assert commands.random_input((2, 3), torch.int64, torch.device("cpu")).dtype == torch.int64
    assert commands.torch_dtype("bfloat16") is torch.bfloat16
