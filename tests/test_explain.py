"""conv_rewrite.explain: rows, reasons, GEMM sizes, JSON, graph code, graph breaks, and the user's compile state."""

import json
import math

import pytest
import torch
import torch.nn as nn

import conv_rewrite
from conv_rewrite import explain
from conv_rewrite.tools.demo_models import NotPatchify, QwenVLPatchEmbed, VideoDiT
from conv_rewrite.tools.explain import Explanation


class PatchThenPadded(nn.Module):
    """A patchify Conv3d and, after a graph break, an overlapping (padded 3x3) Conv2d."""

    def __init__(self):
        super().__init__()
        self.patch_embedding = nn.Conv3d(4, 8, kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.refine = nn.Conv2d(8, 8, kernel_size=3, padding=1)

    def forward(self, x):
        y = self.patch_embedding(x)
        torch._dynamo.graph_break()
        return self.refine(y[:, :, 0])


def test_one_row_per_conv_with_module_path_parameters_and_decision():
    explanation = explain(NotPatchify(8), torch.randn(1, 8, 32, 32))
    rows = {row.module: row for row in explanation}
    assert list(rows) == ["padded", "dilated", "grouped", "overlapping"]
    assert all(row.decision == "skipped" and row.gemm is None for row in explanation)
    assert rows["padded"].reason == "padding 'same'"
    assert rows["dilated"].reason == "dilation (2, 2)"
    assert rows["grouped"].reason == "groups 4"
    assert rows["overlapping"].reason == "stride (2, 2) != kernel (4, 4)"
    grouped = rows["grouped"]
    assert (
        grouped.input_shape,
        grouped.dtype,
        grouped.kernel,
        grouped.stride,
        grouped.padding,
        grouped.dilation,
        grouped.groups,
    ) == ((1, 8, 15, 15), "float32", (2, 2), (2, 2), (0, 0), (1, 1), 4)


@pytest.mark.parametrize(
    "conv, shape",
    [
        (nn.Conv1d(6, 5, kernel_size=4, stride=4), (3, 6, 18)),  # 18 % 4 != 0: the tail is cropped
        (nn.Conv2d(3, 7, kernel_size=(2, 3), stride=(2, 3)), (2, 3, 8, 9)),
        (nn.Conv3d(4, 16, kernel_size=(1, 2, 2), stride=(1, 2, 2), bias=False), (2, 4, 3, 10, 6)),
    ],
)
def test_rewritten_row_gives_the_gemm_it_becomes(conv, shape):
    row = explain(conv, torch.randn(shape))[0]
    kernel = conv.kernel_size
    m = shape[0] * math.prod(s // k for s, k in zip(shape[2:], kernel))
    assert row.decision == "rewritten" and row.reason == f"stride == kernel ({', '.join(map(str, kernel))})"
    assert row.gemm == (m, shape[1] * math.prod(kernel), conv.out_channels)


def test_qwen_vl_patch_embed_is_one_gemm_over_all_patches():
    row = explain(QwenVLPatchEmbed(64), torch.randn(40, 3 * 2 * 14 * 14))[0]
    assert (row.module, row.input_shape, row.gemm) == ("proj", (40, 3, 2, 14, 14), (40, 1176, 64))


def test_graph_break_gives_two_graphs_with_code_before_and_after():
    explanation = explain(PatchThenPadded(), torch.randn(2, 4, 3, 8, 8))
    assert [g.name for g in explanation.graphs] == ["graph 0", "graph 1"]
    assert [(r.module, r.graph, r.decision) for r in explanation] == [
        ("patch_embedding", "graph 0", "rewritten"),
        ("refine", "graph 1", "skipped"),
    ]
    first, second = explanation.graphs
    assert "torch.conv3d" in first.before and "patchify_conv" not in first.before
    assert "torch.conv3d" not in first.after and "patchify_conv" in first.after
    assert "torch.conv2d" in second.before and second.after == second.before


def test_json_round_trip_keeps_rows_and_graphs():
    explanation = explain(PatchThenPadded(), torch.randn(2, 4, 3, 8, 8))
    text = explanation.to_json()
    data = json.loads(text)
    assert data["convs"][0]["gemm"] == [2 * 3 * 4 * 4, 4 * 4, 8]
    assert data["convs"][1]["padding"] == [1, 1]
    again = Explanation.from_json(text)
    assert again.rows == explanation.rows
    assert again.graphs == explanation.graphs


def test_table_names_module_graph_dtype_reason_and_gemm():
    text = str(explain(PatchThenPadded(), torch.randn(2, 4, 3, 8, 8)))
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["module", "graph", "input", "dtype"]
    assert "patch_embedding" in lines[2] and "float32" in lines[2] and "(96, 16, 8)" in lines[2]
    assert "refine" in lines[3] and "stride (1, 1) != kernel (3, 3)" in lines[3]
    assert lines[-1] == "1 of 2 conv(s) rewritten, 1 skipped in 2 graph(s)"


def test_policy_never_reports_without_rewriting():
    explanation = explain(VideoDiT(4, 16, 2), torch.randn(1, 4, 2, 8, 8), policy="never")
    assert [(r.decision, r.reason) for r in explanation] == [("skipped", "policy 'never' (stride == kernel (1, 2, 2))")]
    assert explanation.graphs[0].after == explanation.graphs[0].before


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid options: policy"):
        explain(VideoDiT(4, 16, 2), torch.randn(1, 4, 2, 8, 8), polcy="never")


def test_dynamic_traces_symbolic_sizes():
    row = explain(VideoDiT(4, 16, 2), torch.randn(1, 4, 3, 8, 8), dynamic=True)[0]
    assert row.decision == "rewritten"
    assert any(isinstance(s, str) for s in row.input_shape)
    assert row.gemm == (None, 16, 16)


def test_user_compiled_model_neither_recompiles_nor_turns_dynamic():
    calls = []

    def counting(gm, example_inputs):  # a dynamic compile gets the symbolic sizes as extra int inputs
        calls.append([tuple(x.shape) if isinstance(x, torch.Tensor) else x for x in example_inputs])
        return gm.forward

    model = nn.Sequential(nn.Conv2d(3, 8, 4, 4), nn.ReLU())
    explain(model, torch.randn(2, 3, 16, 20))  # seen first: must not make the user's compile dynamic
    user = torch.compile(model, backend=counting)
    user(torch.randn(1, 3, 32, 32))
    explain(model, torch.randn(2, 3, 16, 24))
    user(torch.randn(1, 3, 32, 32))
    assert calls == [[(8, 3, 4, 4), (8,), (1, 3, 32, 32)]]


def test_explains_the_same_model_class_past_the_recompile_limit():
    model = nn.Conv2d(3, 4, 2, 2)
    for width in range(4, 4 + 2 * (torch._dynamo.config.recompile_limit + 2), 2):
        assert explain(model, torch.randn(1, 3, 4, width))[0].gemm == (width // 2 * 2, 12, 4)


def test_a_model_dynamo_skips_is_an_error():
    class Skipped(nn.Module):
        @torch.compiler.disable
        def forward(self, x):
            return x + 1

    with pytest.raises(RuntimeError, match="Dynamo captured no graph"):
        explain(Skipped(), torch.randn(2))


def test_explain_is_exported_with_the_other_entry_points():
    assert conv_rewrite.explain is explain and "explain" in conv_rewrite.__all__
