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


def _wait_for_item(gate: Gate, index: int, done) -> None:
    gate.wait(index)
    done.put((index, time.monotonic()))


@pytest.mark.parametrize("method", METHODS)
def test_items_below_passing_go_through_a_closed_gate(method: str) -> None:
    """`Gate(passing=n)`: items 0..n-1 are made at once (the first batch, while the model loads), later
    ones wait for the block's end."""
    context = multiprocessing.get_context(method)
    gate, done = Gate(context=context, passing=2), context.Queue()
    with gate.closed():
        workers = [context.Process(target=_wait_for_item, args=(gate, i, done)) for i in (1, 2)]
        for worker in workers:
            worker.start()
        index, _ = done.get(timeout=60)  # a spawned worker on a loaded machine starts slowly
        assert index == 1
        time.sleep(1.5)  # past the wait's one-second check of its parent
        assert done.empty()
        opened = time.monotonic()
    index, when = done.get(timeout=60)
    assert index == 2 and when >= opened
    for worker in workers:
        worker.join(10)


class _Stamped:
    """Items that say when a worker made them."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> tuple[int, float]:
        return index, time.monotonic()


def test_a_loaders_workers_make_only_the_passing_items_while_the_gate_is_closed() -> None:
    """What `Predictor` does while its checkpoint loads: DataLoader workers decode the first batch only."""
    from torch.utils.data import DataLoader

    gate = Gate(passing=2)
    loader = DataLoader(
        Gated(_Stamped(), gate), batch_size=None, num_workers=2, prefetch_factor=3, timeout=60
    )
    with gate.closed():
        items = iter(loader)
        first = [next(items), next(items)]
        time.sleep(1.5)  # the workers, had they been let through, would have made items 2..5 by now
        opened = time.monotonic()
    rest = list(items)
    assert [index for index, _ in first] == [0, 1] and all(made < opened for _, made in first)
    assert [index for index, _ in rest] == [2, 3, 4, 5] and all(made >= opened for _, made in rest)


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
