"""Run benchmark tasks, in this process or in worker processes that compile in parallel and time one at a time.

Compiling dominates a GPU run. Workers compile their task's variants concurrently, then take a file lock for the
timing, so measurements never overlap. The parent gives each task a time limit (a task past it is killed with its
worker, which is replaced) and the whole run a budget (tasks not started by then are reported as skipped).
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterator

from .config import RunConfig


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


def execute(task: Task, cfg: RunConfig, lock: Any) -> list[dict[str, Any]]:
    """Run one task and free what it held on the device."""
    import torch

    from .model_level import run_model
    from .ops import describe, run_shape
    from .shapes import shapes_for

    try:
        if task.kind == "op":
            return run_shape(shapes_for(cfg.device, False, [task.name])[0], task.tokens, cfg, lock)
        return run_model(task.name, task.variant, cfg, lock)
    except Exception as exc:  # e.g. out of memory building the inputs: reported, the run goes on
        return [failed(task, describe(exc))]
    finally:
        torch._dynamo.reset()
        if cfg.device == "cuda":
            torch.cuda.empty_cache()


def failed(task: Task, why: str) -> dict[str, Any]:
    return {"kind": task.kind, "case": task.name + (" +tokens" if task.tokens else ""), "variant": task.variant or "*",
            "mode": "*", "error": why}


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
    """An exclusive lock across processes; released by the OS if its holder dies."""
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _worker(conn: Connection, cfg: RunConfig, lock_path: str) -> None:
    from .config import setup_torch

    setup_torch(cfg)
    while True:
        task = conn.recv()
        if task is None:
            return
        conn.send(execute(task, cfg, file_lock(lock_path)))


def run_serial(tasks: list[Task], cfg: RunConfig, budget_s: float, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every task in this process, in order (no per-task time limit: nothing can stop a task from outside)."""
    from .config import setup_torch

    setup_torch(cfg)
    deadline = time.monotonic() + budget_s
    rows: list[dict[str, Any]] = []
    for task in tasks:
        if time.monotonic() > deadline:
            rows.append(failed(task, "skipped: run budget spent"))
            continue
        start = time.monotonic()
        rows += execute(task, cfg, contextlib.nullcontext())
        log(f"{task.label}: {time.monotonic() - start:.1f} s")
    return rows


class _Slot:
    """One worker process and the task it is running."""

    def __init__(self, ctx: Any, cfg: RunConfig, lock_path: str):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(child, cfg, lock_path), daemon=True)
        self.process.start()
        child.close()
        self.task: Task | None = None
        self.started = 0.0

    def give(self, task: Task) -> None:
        self.task, self.started = task, time.monotonic()
        self.conn.send(task)

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()


def run_parallel(tasks: list[Task], cfg: RunConfig, workers: int, budget_s: float, lock_path: str,
                 log: Callable[[str], None]) -> list[dict[str, Any]]:
    """The tasks over ``workers`` processes; each compiles with one thread so that the CPU cores are shared."""
    os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
    ctx = mp.get_context("spawn")
    deadline = time.monotonic() + budget_s
    pending = list(tasks)
    rows: list[dict[str, Any]] = []
    slots = [_Slot(ctx, cfg, lock_path) for _ in range(min(workers, len(tasks)))]
    try:
        while pending or any(s.task for s in slots):
            for slot in slots:
                if slot.task is None and pending and time.monotonic() < deadline:
                    slot.give(pending.pop(0))
            if time.monotonic() >= deadline:
                rows += [failed(t, "skipped: run budget spent") for t in pending]
                pending.clear()
            busy = {s.conn: s for s in slots if s.task}
            for conn in wait(list(busy), timeout=1.0):
                slot = busy[conn]
                try:
                    rows += conn.recv()
                    log(f"{slot.task.label}: {time.monotonic() - slot.started:.1f} s")
                except EOFError:
                    rows.append(failed(slot.task, "worker died (see its output above)"))
                    slots[slots.index(slot)] = _Slot(ctx, cfg, lock_path)
                    slot.kill()
                    continue
                slot.task = None
            now = time.monotonic()
            for i, slot in enumerate(slots):
                limit = min(slot.started + slot.task.timeout_s, deadline + 30) if slot.task else None
                if limit is not None and now > limit:
                    rows.append(failed(slot.task, f"timeout after {now - slot.started:.0f} s"))
                    log(f"{slot.task.label}: TIMEOUT")
                    slot.kill()
                    slots[i] = _Slot(ctx, cfg, lock_path) if pending else slot
                    slot.task = None
    finally:
        for slot in slots:
            if slot.process.is_alive():
                with contextlib.suppress(Exception):
                    slot.conn.send(None)
                slot.process.join(timeout=10)
                if slot.process.is_alive():
                    slot.kill()
    return rows
