"""`Gate`: worker processes start an item only while no model runs, and never hang on a dead parent."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from pipeline.parallel import Gate, Gated

fork = multiprocessing.get_context("fork")
#: DataLoader workers start by the default method: fork here, forkserver from Python 3.14, spawn on macOS.
METHODS = ["fork", "forkserver", "spawn"]


def _wait_and_note(gate: Gate, done) -> None:
    gate.wait()
    done.put(time.monotonic())


@pytest.mark.parametrize("method", METHODS)
def test_a_closed_gate_holds_a_worker_until_the_block_ends(method: str) -> None:
    context = multiprocessing.get_context(method)
    gate, done = Gate(context=context), context.Queue()
    with gate.closed():
        worker = context.Process(target=_wait_and_note, args=(gate, done))
        worker.start()
        time.sleep(1.5)  # past the wait's one-second check of its parent
        assert done.empty()
        opened = time.monotonic()
    assert done.get(timeout=60) >= opened  # a spawned worker on a loaded machine starts slowly
    worker.join(10)


def test_an_open_gate_lets_a_worker_through_at_once() -> None:
    gate, done = Gate(), fork.Queue()
    start = time.monotonic()
    worker = fork.Process(target=_wait_and_note, args=(gate, done))
    worker.start()
    assert done.get(timeout=60) - start < 5
    worker.join(10)


def test_the_process_that_made_the_gate_never_waits_on_it() -> None:
    """With no worker processes, items are made here, between model calls: waiting would deadlock."""
    gate = Gate()
    with gate.closed():
        gate.wait()
        assert Gated(["a", "b"], gate)[1] == "b"


def test_an_inactive_gate_does_nothing() -> None:
    gate = Gate(active=False)
    assert not gate.active and Gate().active
    with gate.closed():
        gate.wait()


def _orphan_maker(note: Path, method: str) -> None:
    """Close a gate, start a worker waiting on it, say so, and wait to be killed."""
    context = multiprocessing.get_context(method)
    gate = Gate(context=context)
    with gate.closed():
        worker = context.Process(target=_note_when_through, args=(gate, note))
        worker.start()
        note.with_suffix(".pid").write_text(str(worker.pid))
        time.sleep(60)


def _note_when_through(gate: Gate, note: Path) -> None:
    gate.wait()
    note.write_text("through")


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_a_worker_whose_parent_was_killed_stops_waiting(tmp_path: Path, method: str) -> None:
    """A parent killed while the model runs leaves no worker blocked for ever (it exits on its own)."""
    note = tmp_path / "note"
    # spawned, so it starts its own forkserver rather than inherit this process's
    parent = multiprocessing.get_context("spawn").Process(target=_orphan_maker, args=(note, method))
    parent.start()
    # Generous limits, each counted from its own start: a loaded CI machine starts processes slowly.
    deadline = time.monotonic() + 60
    while not note.with_suffix(".pid").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.5)
    assert not note.exists()
    os.kill(parent.pid, signal.SIGKILL)
    parent.join(10)
    deadline = time.monotonic() + 60
    while not note.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert note.read_text() == "through"
