"""The Report (table, dicts, JSON, summary) and the errors rewrite() raises for bad arguments."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.fx
import torch.nn as nn
from core_helpers import conv_nodes, one_thread, shape_propagated  # noqa: F401 (one_thread: autouse)

import conv_rewrite
from conv_rewrite import Options, Report
from conv_rewrite.report import ReportRow

FP64 = torch.float64


class Model(nn.Module):
    """A patch embedding (rewritten) followed by a padded 3x3 conv (skipped)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 8, 2, stride=2).double()
        self.refine = nn.Conv2d(8, 8, 3, padding=1).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.refine(self.patch_embed(x))


X = (2, 3, 6, 9)


@pytest.fixture
def report() -> Report:
    x = torch.randn(X, dtype=FP64)
    return conv_rewrite.rewrite(shape_propagated(torch.fx.symbolic_trace(Model()), x))


def test_report_renders_as_a_table_with_headers_and_module_names(report: Report) -> None:
    text = str(report)
    lines = text.splitlines()
    assert len(lines) == 2 + len(report)  # tabulate "simple": header, rule, one line per conv
    for header in Report.headers:
        assert header in lines[0]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].startswith("patch_embed") and "rewritten" in lines[2] and "(2, 3, 6, 9)" in lines[2]
    assert "(24, 12, 8)" in lines[2]  # GEMM (M, K, N): 2 images x 3 x 4 patches, 3 channels x 2 x 2, 8 outputs
    assert lines[3].startswith("refine") and "skipped" in lines[3] and "stride (1, 1) != kernel (3, 3)" in lines[3]
    assert "|" in report.table(tablefmt="github")


def test_report_rows_and_summary(report: Report) -> None:
    assert len(report) == 2 and [r.module for r in report] == ["patch_embed", "refine"]
    assert report[0].rewritten and not report[1].rewritten
    assert report.rewritten == [report[0]] and report.skipped == [report[1]]
    assert report.summary() == "1 of 2 conv(s) rewritten, 1 skipped"
    assert repr(report) == "<conv_rewrite.Report: 1 of 2 conv(s) rewritten, 1 skipped>"
    assert report[0].gemm == (2 * 3 * 4, 3 * 2 * 2, 8)
    merged = Report()
    merged.extend(report)
    merged.extend(report)
    assert len(merged) == 4 and merged.summary() == "2 of 4 conv(s) rewritten, 2 skipped"


def test_to_dicts_has_every_field_with_tuples_as_lists(report: Report) -> None:
    dicts = report.to_dicts()
    assert [d["module"] for d in dicts] == ["patch_embed", "refine"]
    assert list(dicts[0]) == [f.name for f in dataclasses.fields(ReportRow)]
    assert dicts[0]["input_shape"] == [2, 3, 6, 9] and dicts[0]["kernel"] == [2, 2]
    assert dicts[0]["gemm"] == [24, 12, 8] and dicts[0]["output_layout"] == "contiguous"
    assert dicts[1]["decision"] == "skipped" and dicts[1]["padding"] == [1, 1] and dicts[1]["gemm"] is None
    # refine's input is patch_embed's output: its ShapeProp shape survives the rewrite of patch_embed.
    assert dicts[1]["input_shape"] == [2, 8, 3, 4]


def test_to_json_round_trips_through_json_loads(report: Report) -> None:
    assert json.loads(report.to_json()) == report.to_dicts()
    assert json.loads(report.to_json(indent=2)) == report.to_dicts()


def test_gemm_k_is_known_from_the_weight_when_the_input_shape_is_not() -> None:
    report = conv_rewrite.rewrite(torch.fx.symbolic_trace(Model()))
    assert report[0].input_shape is None
    assert report[0].gemm == (None, 12, 8)
    assert "(?, 12, 8)" in str(report)


def test_rewrite_of_a_non_graph_module_raises_type_error_naming_its_class() -> None:
    with pytest.raises(TypeError, match=r"torch\.nn\.modules\.linear\.Linear"):
        conv_rewrite.rewrite(nn.Linear(2, 2))


def test_unknown_option_raises_value_error_listing_the_valid_ones() -> None:
    gm = torch.fx.symbolic_trace(Model())
    code = gm.code
    with pytest.raises(ValueError, match=r"unknown conv_rewrite option\(s\) bogus, colour; valid options: policy"):
        conv_rewrite.rewrite(gm, bogus=1, colour="red")
    with pytest.raises(ValueError, match="valid options: policy"):
        conv_rewrite.rewrite(gm, {"bogus": 1})
    assert gm.code == code and len(conv_nodes(gm)) == 2


def test_unknown_policy_raises_value_error() -> None:
    gm = torch.fx.symbolic_trace(Model())
    with pytest.raises(ValueError, match=r"unknown policy 'sometimes'; valid policies: always, auto, never"):
        conv_rewrite.rewrite(gm, policy="sometimes")
    with pytest.raises(ValueError, match="unknown policy"):
        Options(policy="sometimes")
    assert len(conv_nodes(gm)) == 2


def test_options_of_the_wrong_type_raise_type_error() -> None:
    with pytest.raises(TypeError, match="options must be a conv_rewrite.Options or a dict"):
        conv_rewrite.rewrite(torch.fx.symbolic_trace(Model()), "never")


@pytest.mark.parametrize(
    "options, kwargs",
    [
        (Options(policy="never"), {}),
        ({"policy": "never"}, {}),
        (None, {"policy": "never"}),
        (Options(policy="always"), {"policy": "never"}),
    ],
    ids=["Options", "dict", "keyword", "keyword overrides Options"],
)
def test_options_come_as_an_object_a_dict_or_keywords(options: object, kwargs: dict) -> None:
    gm = torch.fx.symbolic_trace(Model())
    report = conv_rewrite.rewrite(gm, options, **kwargs)
    assert report[0].reason == "policy 'never' (stride == kernel (2, 2))"
    assert len(conv_nodes(gm)) == 2


def test_graph_without_a_conv_gives_an_empty_report_and_an_unchanged_graph() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU()).double()
    gm = torch.fx.symbolic_trace(model)
    code, nodes = gm.code, [(n.op, n.target) for n in gm.graph.nodes]
    report = conv_rewrite.rewrite(gm)
    assert len(report) == 0 and report.to_dicts() == [] and json.loads(report.to_json()) == []
    assert str(report) == "no convolutions found"
    assert report.summary() == "0 of 0 conv(s) rewritten, 0 skipped"
    assert gm.code == code and [(n.op, n.target) for n in gm.graph.nodes] == nodes
    x = torch.randn(3, 4, dtype=FP64)
    assert torch.equal(gm(x), model(x))


def test_a_second_rewrite_finds_no_conv_and_changes_nothing() -> None:
    x = torch.randn(X, dtype=FP64)
    gm = shape_propagated(torch.fx.symbolic_trace(Model()), x)
    first = conv_rewrite.rewrite(gm)
    code = gm.code
    second = conv_rewrite.rewrite(gm)
    assert [r.decision for r in first] == ["rewritten", "skipped"]
    assert [(r.module, r.decision) for r in second] == [("refine", "skipped")]
    assert gm.code == code
