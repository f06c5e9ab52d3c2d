"""Results as tables (times, ratios to each peer and to the floor, compile times), target checks, JSON and a plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tabulate import tabulate

MODES = ("fwd", "fwd+bwd")
REWRITES = ("rw_backend", "rw_pass")


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Models first, then op shapes in the order of bench/shapes.py (plain before +tokens); stable otherwise."""
    from .models import CPU_MODELS, GPU_MODELS
    from .shapes import CPU_SHAPES, GPU_SHAPES, TINY_SHAPES

    names = {
        "model": [m.name for m in GPU_MODELS + CPU_MODELS],
        "op": [s.name for s in GPU_SHAPES + CPU_SHAPES + TINY_SHAPES],
    }

    def key(row: dict[str, Any]) -> tuple[int, int, bool]:
        case = row.get("case", "")
        base = case.removesuffix(" +tokens")
        order = names.get(row.get("kind", ""), [])
        return (row.get("kind") != "model", order.index(base) if base in order else len(order), case != base)

    return sorted(rows, key=key)


def index(rows: list[dict[str, Any]], kind: str) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    """{(case, mode): {variant: row}} for one kind ("op" or "model")."""
    out: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for row in rows:
        if row.get("kind") == kind and row.get("mode") in MODES:
            out.setdefault((row["case"], row["mode"]), {})[row["variant"]] = row
    return out


def _ms(cell: dict[str, Any] | None) -> float | None:
    return cell.get("ms") if cell and "error" not in cell else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _time_cell(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return ""
    if "error" in cell:
        return "ERR"
    return _fmt(cell.get("ms")) + ("" if cell.get("ok", True) else " BAD")


def variants_of(table: dict[tuple[str, str], dict[str, dict[str, Any]]]) -> list[str]:
    seen: list[str] = []
    for cells in table.values():
        seen += [v for v in cells if v not in seen]
    return seen


def times_table(rows: list[dict[str, Any]], kind: str) -> str:
    """Median ms per case and mode, one column per variant ("BAD": output off the float32 reference)."""
    table = index(rows, kind)
    names = variants_of(table)
    body = [[case, mode] + [_time_cell(cells.get(v)) for v in names] for (case, mode), cells in table.items()]
    return tabulate(body, headers=["case", "mode"] + names, tablefmt="github")


def ratio_rows(rows: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Per case, mode and rewrite form: speedup vs each peer, ratio to the hand-written form and to the floor.

    The floor is the faster of the bare GEMM on pre-patchified rows and the hand-written rewrite: where K is not a
    multiple of 8 (CLIP 588, HunyuanVideo 1.5 65) eager cuBLAS runs slow and Inductor's padded mm beats it.
    """
    out = []
    for (case, mode), cells in index(rows, kind).items():
        peers = {p: _ms(cells.get(p)) for p in ("conv", "eager", "inductor", "hand", "floor", "convert")}
        best_peer = min((t for p, t in peers.items() if p in ("conv", "inductor", "eager") and t), default=None)
        for form in REWRITES:
            t = _ms(cells.get(form))
            if t is None:
                continue
            gflop = next((c.get("gflop") for c in cells.values() if c.get("gflop")), None)
            out.append(
                {
                    "case": case,
                    "mode": mode,
                    "form": form,
                    "ms": t,
                    "gflop": gflop,
                    "vs_eager": _ratio(peers["conv"] or peers["eager"], t),
                    "vs_inductor": _ratio(peers["inductor"], t),
                    "vs_best_peer": _ratio(best_peer, t),
                    "over_hand": _ratio(t, peers["hand"]),
                    "over_floor": _ratio(t, peers["floor"]),
                    "convert_vs_eager": _ratio(peers["conv"] or peers["eager"], peers["convert"]),
                }
            )
    return out


def ratios_table(rows: list[dict[str, Any]], kind: str) -> str:
    body = [
        [
            r["case"],
            r["mode"],
            r["form"],
            _fmt(r["ms"]),
            _fmt(r["vs_eager"], 2),
            _fmt(r["vs_inductor"], 2),
            _fmt(r["over_hand"], 2),
            _fmt(r["over_floor"], 2),
            _fmt(r["convert_vs_eager"], 2),
        ]
        for r in ratio_rows(rows, kind)
    ]
    headers = [
        "case",
        "mode",
        "rewrite",
        "ms",
        "x vs eager",
        "x vs inductor",
        "/ hand",
        "/ floor*",
        "convert_ x vs eager",
    ]
    return tabulate(body, headers=headers, tablefmt="github")


def compile_rows(rows: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Seconds of the compiling first calls (inference forward; training forward+backward) per compiled variant."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        if row.get("kind") == kind and row.get("compiled") and "compile_fwd_s" in row:
            seen[(row["case"], row["variant"])] = row
    out = []
    for case in dict.fromkeys(c for c, _ in seen):
        base = seen.get((case, "inductor"))
        for form in REWRITES + ("hand",):
            row = seen.get((case, form))
            if row is None or base is None:
                continue
            out.append(
                {
                    "case": case,
                    "form": form,
                    "inductor_fwd_s": base["compile_fwd_s"],
                    "fwd_s": row["compile_fwd_s"],
                    "inductor_step_s": base["compile_step_s"],
                    "step_s": row["compile_step_s"],
                    "fwd_overhead": row["compile_fwd_s"] / base["compile_fwd_s"] - 1,
                    "step_overhead": row["compile_step_s"] / base["compile_step_s"] - 1,
                }
            )
    return out


def compile_table(rows: list[dict[str, Any]], kind: str) -> str:
    body = [
        [
            r["case"],
            r["form"],
            _fmt(r["inductor_fwd_s"], 2),
            _fmt(r["fwd_s"], 2),
            f"{100 * r['fwd_overhead']:+.0f}%",
            _fmt(r["inductor_step_s"], 2),
            _fmt(r["step_s"], 2),
            f"{100 * r['step_overhead']:+.0f}%",
        ]
        for r in compile_rows(rows, kind)
    ]
    headers = ["case", "form", "inductor fwd s", "fwd s", "fwd +", "inductor fwd+bwd s", "fwd+bwd s", "fwd+bwd +"]
    return tabulate(body, headers=headers, tablefmt="github")


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, each as 'met' or 'missed' with the cases that miss it."""
    ops, models = ratio_rows(rows, "op"), ratio_rows(rows, "model")

    def check(name: str, subset: list[dict[str, Any]], key: str, ok: Any) -> str:
        have = [r for r in subset if r[key] is not None]
        bad = [f"{r['case']} {r['mode']} {r['form']} ({r[key]:.2f})" for r in have if not ok(r[key])]
        verdict = "met" if have and not bad else ("no data" if not have else "missed")
        return f"{name}: {verdict} ({len(have) - len(bad)}/{len(have)})" + (
            f"; misses: {', '.join(bad)}" if bad else ""
        )

    big_fwd = [r for r in ops if r["mode"] == "fwd" and (r["gflop"] or 0) >= 1.0]
    lines = [
        check("op: rewrite faster than the best of eager conv and Inductor conv", ops, "vs_best_peer", lambda v: v > 1),
        check("op: fwd within 1.10x of the bare GEMM floor (>= 1 GFLOP)", big_fwd, "over_floor", lambda v: v <= 1.10),
        check("op: never slower than the hand-written rewrite (<= 1.02)", ops, "over_hand", lambda v: v <= 1.02),
        check("model: end-to-end faster than default torch.compile", models, "vs_inductor", lambda v: v > 1),
    ]
    comp = compile_rows(rows, "model")
    if comp:
        worst = max(max(r["fwd_overhead"], r["step_overhead"]) for r in comp if r["form"] in REWRITES)
        lines.append(
            f"model: rewrite adds < 5% to compile time: {'met' if worst < 0.05 else 'missed'} "
            f"(worst {100 * worst:+.1f}%)"
        )
    bad = [f"{r['case']} {r['variant']}" for r in rows if r.get("ok") is False and r.get("mode") == "fwd"]
    lines.append("outputs match the float32 conv: " + ("all" if not bad else "OFF for " + ", ".join(bad)))
    return lines


def report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The whole text report: setup, op and model tables, compile times, errors, targets."""
    parts = [", ".join(f"{k}: {v}" for k, v in meta.items() if k != "argv")]
    for kind, title in (("op", "Op level"), ("model", "Model level")):
        if not index(rows, kind):
            continue
        parts += [
            f"## {title}: median ms",
            times_table(rows, kind),
            (
                f"## {title}: rewrite speedups (x = peer / rewrite) and ratios (rewrite / hand, rewrite / floor*; "
                "floor* = min(bare GEMM, hand))"
            ),
            ratios_table(rows, kind),
            f"## {title}: compile seconds (first calls)",
            compile_table(rows, kind),
        ]
    errors = sorted({f"{r['case']} {r['variant']} {r.get('mode', '')}: {r['error']}" for r in rows if "error" in r})
    if errors:
        parts += ["## Errors", "\n".join(errors)]
    parts += ["## Targets", "\n".join(targets(rows))]
    return "\n\n".join(parts)


def write_json(path: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    path.write_text(json.dumps({"meta": meta, "results": rows}, indent=1, default=str))


def plot(path: Path, rows: list[dict[str, Any]]) -> bool:
    """Bar chart of the rewrite's speedup per case over eager conv and over Inductor (log scale).

    False when matplotlib (the ``bench`` extra) is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    data = [r for r in ratio_rows(rows, "op") if r["form"] == "rw_backend"]
    data += [r | {"case": f"model: {r['case']}"} for r in ratio_rows(rows, "model") if r["form"] == "rw_backend"]
    if not data:
        return False
    fig, axes = plt.subplots(len(MODES), 1, figsize=(max(8, 0.45 * len(data)), 9), squeeze=False)
    for ax, mode in zip(axes[:, 0], MODES):
        sub = [r for r in data if r["mode"] == mode]
        xs = range(len(sub))
        for offset, key, label in (
            (-0.2, "vs_eager", "vs eager conv"),
            (0.2, "vs_inductor", "vs torch.compile default"),
        ):
            ax.bar([x + offset for x in xs], [r[key] or 0 for r in sub], width=0.4, label=label)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(list(xs), [r["case"] for r in sub], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("speedup (x)")
        ax.set_title(f"conv_rewrite (backend) speedup, {mode}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
