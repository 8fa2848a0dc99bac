"""Atomic writes: all or nothing, no temporary files left, concurrent writers never share a temp name."""

from __future__ import annotations

import stat
import threading

import pytest

from models.atomic import atomic_open, atomic_path, write_atomic


def test_a_write_replaces_the_file_whole(tmp_path):
    target = tmp_path / "sub" / "a.json"
    write_atomic(target, "first")
    write_atomic(target, b"second")
    assert target.read_text() == "second"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.csv"]


def test_concurrent_writers_each_get_their_own_temp(tmp_path):
    target = tmp_path / "job.json"
    errors = []

    def write(n: int) -> None:
        try:
            for _ in range(20):
                write_atomic(target, f"writer {n}" * 100)
        except OSError as err:  # a shared temp name would make one writer's rename fail
            errors.append(err)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert target.read_text() in {f"writer {n}" * 100 for n in range(4)}
    assert [p.name for p in tmp_path.iterdir()] == ["job.json"]


def test_stale_temps_are_cleared_only_when_asked(tmp_path):
    stale = tmp_path / ".model.safetensors.abc.tmp"
    stale.write_bytes(b"killed save")
    with atomic_path(tmp_path / "model.safetensors") as tmp:
        tmp.write_bytes(b"1")
    assert stale.exists()
    with atomic_path(tmp_path / "model.safetensors", clear_stale=True) as tmp:
        tmp.write_bytes(b"2")
    assert not stale.exists() and (tmp_path / "model.safetensors").read_bytes() == b"2"


def test_only_whole_file_modes(tmp_path):
    with pytest.raises(ValueError, match="whole files"), atomic_open(tmp_path / "x", "a"):
        pass
