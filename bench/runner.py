"""Run benchmark tasks, in this process or in worker processes: compile in parallel, then time one at a time.

Compiling dominates a GPU run, and a compile's first call runs on the GPU, so timing while any other process
compiles would measure the interference. Workers therefore first prepare (compile and check) every task they are
given, all in parallel; only when every task is prepared does the parent ask each worker in turn to time its tasks,
with the GPU otherwise idle. The parent gives each task a time limit (past it the task is killed with its worker,
which is replaced; that worker's other prepared tasks are lost and reported) and the run a budget (tasks not started
by then are reported as skipped).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from .config import RunConfig

Timing = Callable[[], list[dict[str, Any]]]


@dataclass(frozen=True)
class Task:
    """One unit of work: an op shape (all variants) or one model under one variant."""

    kind: str
    name: str
    tokens: bool = False
    variant: str = ""
    timeout_s: float = 120.0

    @property
    def label(self) -> str:
        return " ".join(p for p in (self.kind, self.name, "+tokens" if self.tokens else "", self.variant) if p)


def failed(task: Task, why: str) -> dict[str, Any]:
    return {
        "kind": task.kind,
        "case": task.name + (" +tokens" if task.tokens else ""),
        "variant": task.variant or "*",
        "mode": "*",
        "error": why,
    }


def prepare(task: Task, cfg: RunConfig) -> Timing:
    """Compile and check one task; returns the function that times it (or reports why it could not run)."""
    import torch

    from .model_level import prepare_model
    from .ops import describe, prepare_shape
    from .shapes import shapes_for

    try:
        if task.kind == "op":
            return prepare_shape(shapes_for(cfg.device, False, [task.name])[0], task.tokens, cfg)
        return prepare_model(task.name, task.variant, cfg)
    except Exception as exc:  # e.g. out of memory building the inputs: reported, the run goes on
        why = describe(exc)
        return lambda: [failed(task, why)]
    finally:
        if cfg.device == "cuda":
            torch.cuda.empty_cache()


def _time(task: Task, timing: Timing) -> list[dict[str, Any]]:
    from .ops import describe

    try:
        return timing()
    except Exception as exc:
        return [failed(task, describe(exc))]


def run_serial(tasks: list[Task], cfg: RunConfig, budget_s: float, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every task in this process, prepared then timed, in order (no per-task time limit)."""
    from .config import setup_torch

    setup_torch(cfg)
    deadline = time.monotonic() + budget_s
    rows: list[dict[str, Any]] = []
    for task in tasks:
        if time.monotonic() > deadline:
            rows.append(failed(task, "skipped: run budget spent"))
            continue
        start = time.monotonic()
        rows += _time(task, prepare(task, cfg))
        log(f"{task.label}: {time.monotonic() - start:.1f} s")
    return rows


def _worker(conn: Connection, cfg: RunConfig) -> None:
    """Prepare each task received; on None, time every prepared task and send all rows back."""
    from .config import setup_torch

    setup_torch(cfg)
    prepared: list[tuple[Task, Timing]] = []
    while True:
        task = conn.recv()
        if task is not None:
            prepared.append((task, prepare(task, cfg)))
            conn.send(task.label)
            continue
        rows: list[dict[str, Any]] = []
        for done, timing in prepared:
            rows += _time(done, timing)
        conn.send(rows)
        return


class _Slot:
    """One worker process, the tasks it has prepared and the one it is preparing."""

    def __init__(self, ctx: Any, cfg: RunConfig):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(child, cfg), daemon=True)
        self.process.start()
        child.close()
        self.task: Task | None = None
        self.done: list[Task] = []
        self.started = 0.0

    def give(self, task: Task) -> None:
        self.task, self.started = task, time.monotonic()
        self.conn.send(task)

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()


def run_parallel(
    tasks: list[Task],
    cfg: RunConfig,
    workers: int,
    budget_s: float,
    timing_timeout_s: float,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """The tasks over ``workers`` processes; each compiles with one thread so that the CPU cores are shared."""
    os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
    ctx = mp.get_context("spawn")
    deadline = time.monotonic() + budget_s
    pending = list(tasks)
    rows: list[dict[str, Any]] = []
    slots = [_Slot(ctx, cfg) for _ in range(min(workers, len(tasks)))]

    def lose(slot: _Slot, why: str) -> None:
        rows.extend(failed(t, why) for t in ([slot.task] if slot.task else []) + slot.done)
        slot.kill()
        slot.task, slot.done = None, []

    try:
        while pending or any(s.task for s in slots):
            for i, slot in enumerate(slots):
                if slot.task is None and pending and time.monotonic() < deadline:
                    if not slot.process.is_alive():
                        slots[i] = slot = _Slot(ctx, cfg)
                    slot.give(pending.pop(0))
            if time.monotonic() >= deadline and pending:
                rows += [failed(t, "skipped: run budget spent") for t in pending]
                pending.clear()
            busy = {s.conn: s for s in slots if s.task}
            for conn in wait(list(busy), timeout=1.0):
                slot = busy[conn]
                try:
                    conn.recv()
                except (EOFError, OSError):
                    lose(slot, "worker died while compiling (see its output above)")
                    continue
                log(f"prepared {slot.task.label}: {time.monotonic() - slot.started:.1f} s")
                slot.done.append(slot.task)
                slot.task = None
            now = time.monotonic()
            for slot in slots:
                if slot.task and now > min(slot.started + slot.task.timeout_s, deadline + 30):
                    log(f"{slot.task.label}: TIMEOUT while compiling")
                    lose(slot, f"timeout after {now - slot.started:.0f} s compiling (or lost with its worker)")
        log("all prepared; timing worker by worker")
        timing_deadline = time.monotonic() + timing_timeout_s
        for slot in slots:
            if not slot.done or not slot.process.is_alive():
                continue
            slot.conn.send(None)
            if slot.conn.poll(max(1.0, timing_deadline - time.monotonic())):
                try:
                    rows += slot.conn.recv()
                    log(f"timed {len(slot.done)} tasks")
                    slot.done = []
                except (EOFError, OSError):
                    lose(slot, "worker died while timing")
            else:
                lose(slot, f"timing phase over its {timing_timeout_s:.0f} s")
    finally:
        for slot in slots:
            if slot.process.is_alive():
                slot.process.join(timeout=10)
                if slot.process.is_alive():
                    slot.kill()
    return rows
