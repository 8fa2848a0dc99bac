from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import pipeline.data as data_module
from models.config import ModelConfig
from pipeline.data import (
    RESULT_PIPE_BYTES,
    DatasetError,
    ImageCache,
    StudyDataset,
    ViewBatch,
    collate,
    study_loader,
)
from pipeline.manifest import read_manifest, write_manifest
from pipeline.studies import Study, scan_folder
from tests.pipeline.conftest import write_dicom

SIZE = 64


@pytest.fixture
def studies(study_folder: Path) -> tuple[Study, ...]:
    return scan_folder(study_folder).studies  # 1.2.1 joint, 1.2.2 frontal, 1.2.3 lateral


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file `pipeline.data` decodes, in order (in this process)."""
    seen: list[Path] = []
    real = data_module.read_image

    def counting(path, **kwargs):
        seen.append(Path(path))
        return real(path, **kwargs)

    monkeypatch.setattr(data_module, "read_image", counting)
    return seen


def test_sample_and_collate_give_masks_labels_and_ids(studies, tiny_config: ModelConfig) -> None:
    labels = np.array([[1, 0], [np.nan, 1], [0, np.nan]], dtype=np.float32)
    dataset = StudyDataset(studies, labels, config=tiny_config)
    assert len(dataset) == 3
    sample = dataset[1]
    assert sample.study_id == "1.2.2" and sample.lateral is None
    assert sample.frontal.shape == (1, SIZE, SIZE) and sample.frontal.dtype == torch.float32
    batch = collate([dataset[i] for i in range(3)])
    assert isinstance(batch, ViewBatch) and len(batch) == 3
    assert batch.frontal.shape == batch.lateral.shape == (3, 1, SIZE, SIZE)
    assert batch.has_frontal.tolist() == [True, True, False]
    assert batch.has_lateral.tolist() == [True, False, True]
    assert batch.has_frontal.dtype == torch.bool
    torch.testing.assert_close(batch.labels, torch.from_numpy(labels), equal_nan=True)
    assert batch.study_ids == ["1.2.1", "1.2.2", "1.2.3"]
    assert torch.count_nonzero(batch.lateral[1]) == 0 and torch.count_nonzero(batch.frontal[2]) == 0
    # eval images are normalised per the config: (0 - mean) / std in the padding of a square image
    assert batch.frontal[0].std() > 0


def test_no_labels_means_all_unknown_and_wrong_shape_is_refused(studies, tiny_config: ModelConfig) -> None:
    batch = collate([s for s in StudyDataset(studies, config=tiny_config)])
    assert batch.labels.shape == (3, 2) and torch.isnan(batch.labels).all()
    with pytest.raises(DatasetError, match=r"labels have shape \(3, 3\); expected \(3, 2\)"):
        StudyDataset(studies, np.zeros((3, 3)), config=tiny_config)


def test_from_manifest_reorders_labels_to_the_config(study_folder: Path, tiny_config: ModelConfig) -> None:
    scanned = scan_folder(study_folder)
    path = write_manifest(
        scanned, study_folder / "m.csv", labels=["nodule", "other"], values={"1.2.1": {"nodule": 1}}
    )
    dataset = StudyDataset.from_manifest(read_manifest(path), config=tiny_config)
    torch.testing.assert_close(dataset[0].labels, torch.tensor([np.nan, 1.0]), equal_nan=True)


def test_dataloader_with_workers(studies, tiny_config: ModelConfig, tmp_path: Path) -> None:
    labels = np.array([[1, 0], [0, 1], [np.nan, np.nan]], dtype=np.float32)
    dataset = StudyDataset(studies, labels, config=tiny_config, cache_dir=tmp_path / "cache")
    pickle.dumps(dataset)
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert [len(b) for b in batches] == [2, 1]
    assert batches[0].has_lateral.tolist() == [True, False] and batches[1].has_frontal.tolist() == [False]
    assert torch.isnan(batches[1].labels).all()
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 4  # written by the workers


def test_a_sample_crosses_processes_by_value(studies, tiny_config: ModelConfig) -> None:
    """Workers hand samples over pickled with their arrays (not one shared-memory segment per tensor,
    whose file descriptor the main process must fetch over a socket: 2 ms of its time per study)."""
    from multiprocessing.reduction import ForkingPickler

    sample = StudyDataset(studies, config=tiny_config)[0]
    one_view = data_module.StudySample("x", None, sample.lateral, torch.tensor([1.0, float("nan")]), 64)
    for original in (sample, one_view, sample.as_dtype(torch.bfloat16), one_view.as_dtype(torch.float16)):
        payload = ForkingPickler.dumps(
            original
        )  # what a DataLoader worker sends, torch's reductions included
        views = [t for t in (original.frontal, original.lateral) if t is not None]
        assert len(payload) > sum(t.numel() * t.element_size() for t in views)
        back = pickle.loads(payload)
        assert back.study_id == original.study_id and back.image_size == original.image_size
        for name in ("frontal", "lateral", "labels"):
            mine, theirs = getattr(back, name), getattr(original, name)
            assert (mine is None) == (theirs is None), name
            if mine is not None:
                assert mine.dtype == theirs.dtype, name  # bfloat16, which numpy lacks, included
                torch.testing.assert_close(mine, theirs, equal_nan=True, rtol=0, atol=0, msg=name)


def test_samples_in_a_16_bit_dtype_collate_in_it(studies, tiny_config: ModelConfig) -> None:
    """A fast model's batches keep the dtype their samples were cast to in the workers; a missing view is
    zeros in it, and a stray float32 sample is cast to the batch's dtype."""
    sample = StudyDataset(studies, config=tiny_config)[0]
    half = sample.as_dtype(torch.bfloat16)
    assert half.labels.dtype == torch.float32 and torch.equal(half.frontal, sample.frontal.to(torch.bfloat16))
    lateral_only = data_module.StudySample("x", None, sample.lateral, sample.labels, sample.image_size)
    batch = collate([half, lateral_only])
    assert (
        batch.frontal.dtype == batch.lateral.dtype == torch.bfloat16 and batch.labels.dtype == torch.float32
    )
    assert torch.equal(batch.frontal[0], half.frontal) and not batch.frontal[1].any()
    assert torch.equal(batch.lateral[1], sample.lateral.to(torch.bfloat16))
    assert batch.has_frontal.tolist() == [True, False] and batch.has_lateral.tolist() == [True, True]
    assert collate([sample]).frontal.dtype == torch.float32


def test_workers_draw_different_augmentations(study_folder: Path, tiny_config: ModelConfig) -> None:
    study = scan_folder(study_folder).studies[0]
    dataset = StudyDataset([study] * 4, config=tiny_config, train=True)
    loader = DataLoader(dataset, batch_size=1, num_workers=2, collate_fn=collate)
    frontals = [b.frontal[0] for b in loader]
    assert all(not torch.equal(frontals[i], frontals[j]) for i in range(4) for j in range(i + 1, 4))


def test_second_epoch_reads_the_cache(studies, tiny_config, tmp_path: Path, decodes) -> None:
    dataset = StudyDataset(studies, config=tiny_config, cache_dir=tmp_path / "cache")
    first = collate([s for s in dataset])
    assert len(decodes) == 4 and dataset.cache.misses == 4
    second = collate([s for s in dataset])
    assert len(decodes) == 4 and dataset.cache.hits == 4
    torch.testing.assert_close(first.frontal, second.frontal)
    fresh = StudyDataset(studies, config=tiny_config, cache_dir=tmp_path / "cache")
    collate([s for s in fresh])
    assert len(decodes) == 4  # a new dataset (a new run) uses the same cache
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_changed_file_or_image_size_misses_the_cache(studies, tiny_config, tmp_path: Path, decodes) -> None:
    cache = tmp_path / "cache"
    StudyDataset(studies, config=tiny_config, cache_dir=cache)[1]
    path = studies[1].frontal.path
    write_dicom(path, study_uid="1.2.2", view_position="AP", seed=99)
    os.utime(path, ns=(1, 1))  # same size; a different mtime
    dataset = StudyDataset(studies, config=tiny_config, cache_dir=cache)
    dataset[1]
    assert decodes == [path, path]
    bigger = StudyDataset(
        studies, config=ModelConfig.tiny(labels=tiny_config.labels, image_size=96), cache_dir=cache
    )
    assert bigger[1].frontal.shape == (1, 96, 96)
    assert decodes == [path, path, path]
    assert len(list(cache.rglob("*.npy"))) == 3


def test_content_key_ignores_mtime_but_sees_content(studies, tiny_config, tmp_path: Path, decodes) -> None:
    dataset = StudyDataset(studies, config=tiny_config, cache_dir=tmp_path / "c", cache_key="content")
    dataset[1]
    path = studies[1].frontal.path
    os.utime(path, ns=(5, 5))
    dataset[1]
    assert len(decodes) == 1
    write_dicom(path, study_uid="1.2.2", view_position="AP", seed=42)
    dataset[1]
    assert len(decodes) == 2
    with pytest.raises(DatasetError, match="unknown cache key 'md5'"):
        ImageCache(tmp_path, tiny_config, key="md5")


@pytest.mark.parametrize("damage", [b"", b"garbage", "wrong shape"])
def test_corrupt_cache_entry_is_rebuilt(
    studies, tiny_config, tmp_path: Path, decodes, caplog, damage
) -> None:
    dataset = StudyDataset(studies, config=tiny_config, cache_dir=tmp_path / "cache")
    expected = dataset[1].frontal
    entry = dataset.cache.entry(studies[1].frontal.path)
    if damage == "wrong shape":
        np.save(entry, np.zeros((1, 8, 8), dtype=np.float32))
    else:
        entry.write_bytes(damage)
    with caplog.at_level(logging.WARNING, logger="pipeline.data"):
        again = dataset[1].frontal
    torch.testing.assert_close(again, expected)
    assert len(decodes) == 2 and "rebuilding it" in caplog.text
    assert np.load(entry).shape == (1, SIZE, SIZE)  # rewritten


def test_unreadable_view_is_dropped_with_a_warning(studies, tiny_config, caplog) -> None:
    lateral = studies[0].lateral.path
    lateral.write_bytes(lateral.read_bytes()[:-3000])  # pixel data cut short
    dataset = StudyDataset(studies, config=tiny_config)
    with caplog.at_level(logging.WARNING, logger="pipeline.data"):
        sample = dataset[0]
    assert sample.frontal is not None and sample.lateral is None
    assert str(lateral) in caplog.text and "lateral view of study 1.2.1 dropped" in caplog.text
    assert lateral in dataset.failed
    batch = collate([sample])
    assert batch.has_frontal.tolist() == [True] and batch.has_lateral.tolist() == [False]


def test_sample_with_no_readable_view_is_skipped_by_collate(studies, tiny_config, caplog) -> None:
    only = studies[2].lateral.path
    only.write_bytes(b"not an image any more")
    dataset = StudyDataset(studies, config=tiny_config)
    with caplog.at_level(logging.WARNING, logger="pipeline.data"):
        batch = collate([dataset[1], dataset[2]])
    assert batch.study_ids == ["1.2.2"] and batch.frontal.shape[0] == 1
    assert "study 1.2.3 skipped" in caplog.text
    empty = collate([dataset[2]])
    assert len(empty) == 0 and empty.frontal.shape == (0, 1, SIZE, SIZE) and empty.labels.shape == (0, 2)
    with pytest.raises(DatasetError):
        collate([])


def test_view_batch_to_and_pin_memory(studies, tiny_config) -> None:
    batch = collate([s for s in StudyDataset(studies, config=tiny_config)])
    moved = batch.to("cpu")
    assert isinstance(moved, ViewBatch) and moved.study_ids == batch.study_ids
    assert moved.frontal.device.type == "cpu" and moved.has_lateral.dtype == torch.bool
    if not torch.cuda.is_available():
        pytest.skip("pin_memory needs an accelerator")
    pinned = batch.pin_memory()
    assert pinned.frontal.is_pinned() and pinned.labels.is_pinned()


def test_study_loader_hands_a_study_over_in_one_pipe_read() -> None:
    """The workers' result pipe holds a whole study (`RESULT_PIPE_BYTES`), where the system allows it."""
    fcntl = pytest.importorskip("fcntl")
    if not hasattr(fcntl, "F_GETPIPE_SZ"):
        pytest.skip("pipe sizes are a Linux feature")
    limit = Path("/proc/sys/fs/pipe-max-size")
    if int(limit.read_text()) < RESULT_PIPE_BYTES:
        pytest.skip(f"{limit} is below {RESULT_PIPE_BYTES}")
    iterator = iter(study_loader(list(range(5)), batch_size=2, workers=1))
    pipe = iterator._worker_result_queue._reader.fileno()  # the queue the widening goes through
    assert fcntl.fcntl(pipe, fcntl.F_GETPIPE_SZ) >= RESULT_PIPE_BYTES
    assert list(iterator) == [0, 1, 2, 3, 4]


def test_phantom_manifest_trains_through_a_dataloader(phantom: Path, tmp_path: Path) -> None:
    manifest = read_manifest(phantom / "labels.csv")
    config = ModelConfig.tiny(labels=manifest.label_names)
    dataset = StudyDataset.from_manifest(manifest, config=config, train=True, cache_dir=tmp_path / "c")
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate, shuffle=True)
    for _ in range(2):
        batches = list(loader)
        assert sum(len(b) for b in batches) == len(manifest)
        assert all(torch.isfinite(b.frontal).all() and torch.isfinite(b.lateral).all() for b in batches)
    routes = [s.route for s in manifest.studies]
    assert sum(b.has_frontal.sum().item() for b in batches) == sum(r != "lateral" for r in routes)
    assert not torch.isnan(torch.cat([b.labels for b in batches])).any()
