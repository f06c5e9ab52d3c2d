"""The conv-rewrite command: demo on the CPU, inspect on factories defined here, and one-line errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from conv_rewrite.tools import cli
from conv_rewrite.tools.explain import Explanation

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def patch_embed_and_padded() -> nn.Module:
    """A factory for ``inspect``: a Wan-style patch embed Conv3d, then a padded Conv3d."""
    return nn.Sequential(nn.Conv3d(4, 8, kernel_size=(1, 2, 2), stride=(1, 2, 2)), nn.Conv3d(8, 8, 3, padding=1))


def broken_factory() -> nn.Module:
    raise ValueError("no weights here")


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m conv_rewrite ARGS`` from this folder, on this checkout.

    Warnings of imported libraries are not the command's output (torch warns at import where NumPy is missing).
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "conv_rewrite", *args],
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_demo_quick_runs_on_cpu_and_summarizes_every_model():
    result = run("demo", "--quick", "--device", "cpu", timeout=400)
    assert result.returncode == 0, result.stderr
    summary = result.stdout[result.stdout.index("summary") :].splitlines()[3:]
    rewritten = {line.split()[0]: line.split()[1:4] for line in summary}
    assert set(rewritten) == {"video_dit", "qwen_vl_patch_embed", "videomae_embed", "vit", "not_patchify"}
    assert rewritten.pop("not_patchify")[::2] == ["0/4", "ok"]
    assert all(cells[::2] == ["1/1", "ok"] for cells in rewritten.values())
    assert "video_dit: torch.compile + conv_rewrite ... done in" in result.stderr


def test_no_command_means_demo(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "run_demo", lambda args: seen.append((args.command, args.quick, args.device)) or 0)
    assert cli.main([]) == 0
    assert seen == [("demo", False, "auto")]


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("1x16x5x32x32:float32", ((1, 16, 5, 32, 32), torch.float32)),
        ("1,16,5,32,32", ((1, 16, 5, 32, 32), torch.float32)),
        ("2x3:bfloat16", ((2, 3), torch.bfloat16)),
        ("7:int64", ((7,), torch.int64)),
    ],
)
def test_parse_input(spec, expected):
    assert cli.parse_input(spec) == expected


def test_inspect_prints_table_checks_numerics_and_writes_json_and_graphs(tmp_path):
    report, graphs = tmp_path / "report.json", tmp_path / "graphs"
    result = run(
        "inspect",
        "test_cli:patch_embed_and_padded",
        "--input",
        "2x4x3x8x8",
        "--json",
        str(report),
        "--graphs",
        str(graphs),
        "--repeats",
        "2",
    )
    assert result.returncode == 0, result.stderr
    assert "1 of 2 conv(s) rewritten, 1 skipped in 1 graph(s)" in result.stdout
    assert "compiled + rewrite vs eager: max abs err" in result.stdout and "(ok)" in result.stdout
    explanation = Explanation.from_json(report.read_text())
    assert [(r.module, r.decision, r.reason, r.gemm) for r in explanation] == [
        ("0", "rewritten", "stride == kernel (1, 2, 2)", (2 * 3 * 4 * 4, 4 * 4, 8)),
        ("1", "skipped", "stride (1, 1, 1) != kernel (3, 3, 3)", None),
    ]
    before, after = (graphs / "graph_0.before.py").read_text(), (graphs / "graph_0.after.py").read_text()
    assert before.count("torch.conv3d(") == 2 and after.count("torch.conv3d(") == 1 and "patchify_conv" in after


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


def test_model_failure_from_the_shell_is_one_line_without_traceback():
    result = run("inspect", "test_cli:patch_embed_and_padded", "--input", "1x5x2x8x8")
    assert result.returncode == 1
    assert result.stderr.startswith("conv-rewrite: error: the model failed on input (1, 5, 2, 8, 8) float32: ")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
