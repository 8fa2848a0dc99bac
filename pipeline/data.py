"""Studies to tensors: `StudyDataset` (with a decoded-image cache on disk), `collate` and `ViewBatch`.

A view that fails to decode is dropped from its sample with a warning naming the file; a sample whose
views all failed is dropped by `collate` (also with a warning), so one bad file never stops training.
A batch where every sample was dropped has length 0; training loops skip it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

try:
    import fcntl
except ImportError:  # absent on Windows
    fcntl = None

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from models.atomic import atomic_open
from models.config import ModelConfig
from pipeline.dicom import HIGH_PERCENTILE, LOW_PERCENTILE, RANGE_SIDE, read_image
from pipeline.errors import ImageError, TwoviewError
from pipeline.isolate import Runner, direct
from pipeline.manifest import Manifest
from pipeline.studies import ImageSource, Study
from pipeline.transforms import AugmentSettings, PerViewd, epoch_transform, preprocess, preprocess_settings

__all__ = [
    "DECODE_OVERSAMPLING",
    "CacheKey",
    "DatasetError",
    "ImageCache",
    "InDtype",
    "StudyDataset",
    "StudySample",
    "ViewBatch",
    "batched",
    "collate",
    "decode_view",
    "prefetch_factor",
    "study_loader",
    "worker_init",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: The model path decodes to at least this many times the model's input size (`read_image(target_size=)`)
#: and resizes the rest of the way as the full image would be. At 1x, the demo model's probabilities moved
#: by up to 0.17 from full resolution on real 512 px films (it reacts that much to a one-row crop); at 2x
#: they stay within 0.02 (bench/RESULTS.md).
DECODE_OVERSAMPLING = 2

#: "stat": resolved path + size + mtime_ns + inode (fast, no read; misses only an in-place rewrite of
#: identical size within the file system's mtime resolution). "content": a hash of the bytes (safe, slower).
CacheKey = Literal["stat", "content"]


class DatasetError(TwoviewError):
    """A dataset that cannot be built from what it was given (e.g. labels of the wrong shape)."""


@dataclass(frozen=True)
class StudySample:
    """One study ready for collation: normalised `[1, S, S]` images (None = view missing) and `[K]` labels.

    The images are float32, or in the dtype a fast model computes in (`as_dtype`); the labels float32.
    """

    study_id: str
    frontal: torch.Tensor | None
    lateral: torch.Tensor | None
    labels: torch.Tensor  # float32 [K], NaN = unknown
    image_size: int

    @property
    def is_empty(self) -> bool:
        return self.frontal is None and self.lateral is None

    @property
    def image_dtype(self) -> torch.dtype:
        """The images' dtype (float32 for a sample with none)."""
        return next((t.dtype for t in (self.frontal, self.lateral) if t is not None), torch.float32)

    def as_dtype(self, dtype: torch.dtype) -> StudySample:
        """The same study with its images in `dtype` (rounded as autocast rounds a model's input)."""
        cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
        return replace(self, frontal=cast(self.frontal), lateral=cast(self.lateral))

    def __reduce__(self):
        """Pickled with its arrays by value: from a DataLoader worker, each tensor would otherwise cross
        in a shared-memory segment of its own, its file descriptor fetched by the receiving process over a
        socket from the worker, which cost the main thread more than the copy (`bench/RESULTS.md`)."""
        images = (None if t is None else _array(t) for t in (self.frontal, self.lateral))
        dtype = str(self.image_dtype)
        return _study_sample, (self.study_id, *images, self.labels.numpy(), self.image_size, dtype)


def _array(tensor: torch.Tensor) -> np.ndarray:
    """A CPU tensor's values as a numpy array; bfloat16, which numpy lacks, as its raw 16-bit patterns."""
    return (tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor).numpy()


def _study_sample(
    study_id: str,
    frontal: np.ndarray | None,
    lateral: np.ndarray | None,
    labels: np.ndarray,
    size: int,
    dtype: str = str(torch.float32),
) -> StudySample:
    def tensor(array: np.ndarray | None) -> torch.Tensor | None:
        if array is None:
            return None
        values = torch.from_numpy(array)
        return values.view(torch.bfloat16) if dtype == str(torch.bfloat16) else values

    return StudySample(study_id, tensor(frontal), tensor(lateral), torch.from_numpy(labels), size)


@dataclass
class ViewBatch:
    """A batch for `TwoViewNet`: both view tensors (zeros where a view is missing), masks, labels, ids."""

    frontal: torch.Tensor  # float32 [B, 1, S, S] (or the samples' dtype: see `StudySample.as_dtype`)
    lateral: torch.Tensor  # same dtype and shape
    has_frontal: torch.Tensor  # bool [B]
    has_lateral: torch.Tensor  # bool [B]
    labels: torch.Tensor  # float32 [B, K], NaN = unknown
    study_ids: list[str]

    def __len__(self) -> int:
        return len(self.study_ids)

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> ViewBatch:
        """A copy with every tensor on `device`."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> ViewBatch:
        """Called by `DataLoader(pin_memory=True)` so host-to-GPU copies can be asynchronous."""
        return self._map(lambda t: t.pin_memory())

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> ViewBatch:
        return ViewBatch(
            fn(self.frontal),
            fn(self.lateral),
            fn(self.has_frontal),
            fn(self.has_lateral),
            fn(self.labels),
            list(self.study_ids),
        )


def collate(samples: Sequence[StudySample], *, pin: bool = False) -> ViewBatch:
    """Stack samples into a `ViewBatch`, dropping (with a warning) samples that have no view left.

    `pin` (with CUDA only) stacks the images and labels straight into pinned memory, for asynchronous copies.
    The rows are copied by numpy, on this thread alone: torch splits each row's copy across its intra-op
    threads, which on a busy machine made this thread wait for cores the decoding workers held. The images
    keep the samples' dtype (the first sample's, should they differ).
    """
    if not samples:
        raise DatasetError("cannot collate an empty list of samples")
    kept = []
    for sample in samples:
        if sample.is_empty:
            logger.warning("study %s skipped: none of its images could be read", sample.study_id)
        else:
            kept.append(sample)
    size, k = samples[0].image_size, samples[0].labels.shape[0]
    dtype = kept[0].image_dtype if kept else torch.float32
    views = [torch.empty(len(kept), 1, size, size, dtype=dtype, pin_memory=pin) for _ in range(2)]
    for batch, name in zip(views, ("frontal", "lateral"), strict=True):
        rows = _array(batch)
        for row, sample in enumerate(kept):
            image = getattr(sample, name)
            if image is None:
                rows[row] = 0  # 0.0 in every dtype, bfloat16's bit patterns included
            else:
                rows[row] = _array(image.to(dtype))
    labels = torch.empty(len(kept), k, dtype=torch.float32, pin_memory=pin)
    if kept:
        np.stack([s.labels.numpy() for s in kept], out=labels.numpy())
    return ViewBatch(
        frontal=views[0],
        lateral=views[1],
        has_frontal=torch.tensor([s.frontal is not None for s in kept], dtype=torch.bool),
        has_lateral=torch.tensor([s.lateral is not None for s in kept], dtype=torch.bool),
        labels=labels,
        study_ids=[s.study_id for s in kept],
    )


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of `size` items (the last may be shorter)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def prefetch_factor(batch_size: int, workers: int) -> int:
    """Studies each worker loads ahead: together, two batches, so the model never waits for a whole one."""
    return max(2, math.ceil(2 * batch_size / workers))


def study_loader(dataset: Dataset, *, batch_size: int, workers: int, **options: Any) -> DataLoader:
    """A DataLoader whose workers load one study per task (the caller batches them, see `batched`): no
    worker sits on a whole batch while the others idle. The workers keep two batches in flight between
    them and run `worker_init`; `options` go to the DataLoader (sampler, context, persistence)."""
    return _StudyLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        prefetch_factor=prefetch_factor(batch_size, workers) if workers else None,
        worker_init_fn=worker_init if workers else None,
        **options,
    )


#: What the workers' result pipe is asked to hold: a 224 px two-view study is ~400 KB in float32.
RESULT_PIPE_BYTES = 1 << 20


class _StudyLoader(DataLoader):
    """A DataLoader whose worker processes hand studies over through a pipe wide enough for a whole one."""

    def _get_iterator(self):
        iterator = super()._get_iterator()
        _widen_pipe(getattr(iterator, "_worker_result_queue", None))
        return iterator


def _widen_pipe(queue: Any) -> None:
    """Let `queue`'s pipe hold `RESULT_PIPE_BYTES` (Linux gives 64 KiB): a study then crosses in one write
    and one read instead of seven of each, each read a fresh allocation on the receiving main thread
    (0.19 -> 0.13 ms a study in isolation, `bench/RESULTS.md`). Best effort: where the platform or the
    system's pipe limit does not allow it, or PyTorch's loader has no such queue, nothing changes."""
    setpipe = getattr(fcntl, "F_SETPIPE_SZ", None)  # None where there is no fcntl
    reader = getattr(queue, "_reader", None)
    if setpipe is None or reader is None:
        return
    try:
        fcntl.fcntl(reader.fileno(), setpipe, RESULT_PIPE_BYTES)
    except OSError:  # above /proc/sys/fs/pipe-max-size, or over the user's pipe quota
        pass


class ImageCache:
    """Preprocessed `[1, S, S]` arrays as `.npy` files, keyed by the file and the preprocessing settings.

    Entries are written to a temporary file and renamed into place, so parallel workers never read
    half a file; an unreadable entry is rebuilt, never fatal.
    """

    def __init__(
        self,
        folder: str | Path,
        config: ModelConfig,
        *,
        key: CacheKey = "stat",
        apply_voi: bool = True,
        reduced: bool = True,
    ) -> None:
        if key not in ("stat", "content"):
            raise DatasetError(f"unknown cache key {key!r}; choose one of: stat, content")
        self.folder = Path(folder)
        self.key_kind = key
        self.shape = (1, config.image_size, config.image_size)
        decoding = {
            "apply_voi": apply_voi,
            "percentiles": [LOW_PERCENTILE, HIGH_PERCENTILE],
            "range_side": RANGE_SIDE,
            "decoded_at": f"{DECODE_OVERSAMPLING}x" if reduced else "full",  # see `read_image(target_size=)`
        }
        self._settings = json.dumps({**preprocess_settings(config), **decoding}, sort_keys=True)
        self.hits = 0
        self.misses = 0

    def key(self, path: Path) -> str:
        """The entry name for `path` as it is now (changes when the file or the settings change)."""
        digest = hashlib.sha256(self._settings.encode())
        if self.key_kind == "content":
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        else:
            st = path.stat()
            digest.update(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}".encode())
        return digest.hexdigest()

    def entry(self, path: Path) -> Path:
        key = self.key(path)
        return self.folder / key[:2] / f"{key}.npy"

    def get_or_create(self, path: Path, make: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array for `path`, or `make()`'s result, stored for next time."""
        entry = self.entry(path)
        array = self._load(entry, path)
        if array is not None:
            self.hits += 1
            return array
        self.misses += 1
        array = np.ascontiguousarray(make(), dtype=np.float32)
        self._store(entry, array)
        return array

    def _load(self, entry: Path, path: Path) -> np.ndarray | None:
        try:
            array = np.load(entry, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as err:
            logger.warning("cache entry %s for %s is unreadable (%s); rebuilding it", entry, path, err)
            return None
        if array.shape != self.shape or array.dtype != np.float32:
            logger.warning(
                "cache entry %s for %s has shape %s %s; rebuilding it", entry, path, array.shape, array.dtype
            )
            return None
        return array

    def _store(self, entry: Path, array: np.ndarray) -> None:
        try:
            with atomic_open(entry, "wb") as f:
                np.save(f, array, allow_pickle=False)
        except OSError as err:
            logger.warning("cannot write cache entry %s (%s); continuing without it", entry, err)


def worker_init(worker_id: int) -> None:
    """For DataLoader workers: MONAI without metadata tracking (our transforms use none; ~25 % less time
    per cached study). Set only in the worker processes, so MONAI elsewhere is untouched."""
    from monai.data import set_track_meta

    set_track_meta(False)


def decode_view(path: Path, config: ModelConfig, apply_voi: bool = True, reduced: bool = True) -> np.ndarray:
    """One file decoded and preprocessed to the model's `[1, S, S]` input (before normalisation).

    `reduced` decodes at `DECODE_OVERSAMPLING` times the model size where the codec allows (the model
    path); full resolution otherwise.
    """
    target = DECODE_OVERSAMPLING * config.image_size if reduced else None
    image = read_image(path, apply_voi=apply_voi, target_size=target)
    size = (image.rows, image.columns) if image.reduction > 1 else None
    return preprocess(image.pixels, config, full_size=size, reduction=image.reduction)


class InDtype(Dataset[StudySample]):
    """`dataset`'s samples with their images in `dtype`, cast in the DataLoader worker that loads them.

    A mixed-precision model's first step casts its input to its autocast dtype; done here instead, the
    main process receives, stacks and copies half the bytes, for the same result (`bench/RESULTS.md`).
    """

    def __init__(self, dataset: Dataset[StudySample], dtype: torch.dtype) -> None:
        self.dataset, self.dtype = dataset, dtype

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> StudySample:
        return self.dataset[index].as_dtype(self.dtype)


class StudyDataset(Dataset[StudySample]):
    """Studies (+ optional `[N, K]` labels) as `StudySample`s: decode, preprocess (cached), augment, normalise.

    `train=True` adds random augmentation, drawn independently per view and per DataLoader worker.
    `reduced=True` (the default) decodes each file at the lowest resolution that still covers the model's
    input size (see `read_image(target_size=)`); False decodes at full resolution first.
    """

    def __init__(
        self,
        studies: Sequence[Study],
        labels: np.ndarray | None = None,
        *,
        config: ModelConfig,
        train: bool = False,
        cache_dir: str | Path | None = None,
        cache_key: CacheKey = "stat",
        apply_voi: bool = True,
        augment: AugmentSettings | None = None,
        reduced: bool = True,
        runner: Runner = direct,
    ) -> None:
        self.studies = tuple(studies)
        self.runner = runner  # decodes each view (`pipeline.isolate.Isolated`: in a killable child)
        self.config = config
        self.train = train
        self.apply_voi = apply_voi
        self.reduced = reduced
        shape = (len(self.studies), config.num_labels)
        if labels is None:
            labels = np.full(shape, np.nan, dtype=np.float32)
        labels = np.asarray(labels, dtype=np.float32)
        if labels.shape != shape:
            raise DatasetError(
                f"labels have shape {labels.shape}; expected {shape} ({len(self.studies)} studies x "
                f"{config.num_labels} labels of the model config)"
            )
        self.labels = torch.from_numpy(labels.copy())
        self.cache = (
            ImageCache(cache_dir, config, key=cache_key, apply_voi=apply_voi, reduced=reduced)
            if cache_dir
            else None
        )
        self.transform = PerViewd(epoch_transform(config, train=train, augment=augment))
        self.transform.set_random_state(seed=int(torch.randint(2**31 - 1, ()).item()))
        self.failed: dict[Path, str] = {}
        self._worker_seed: tuple[int, int] | None = None

    @classmethod
    def from_manifest(cls, manifest: Manifest, *, config: ModelConfig, **kwargs) -> StudyDataset:
        """A dataset of a manifest's studies with its labels in the config's label order."""
        return cls(manifest.studies, manifest.labels_for(config.labels), config=config, **kwargs)

    def __len__(self) -> int:
        return len(self.studies)

    def __getitem__(self, index: int) -> StudySample:
        self._seed_worker()
        return self.decode(self.studies[index], self.labels[index].clone())

    def decode(self, study: Study, labels: torch.Tensor | None = None) -> StudySample:
        """Any study as a sample with this dataset's preprocessing (labels unknown unless given)."""
        arrays = {"frontal": self.load_view(study.frontal), "lateral": self.load_view(study.lateral)}
        out = self.transform(arrays)
        if labels is None:
            labels = torch.full((self.config.num_labels,), float("nan"))
        return StudySample(study.study_id, out["frontal"], out["lateral"], labels, self.config.image_size)

    def load_view(self, source: ImageSource | None) -> np.ndarray | None:
        """The preprocessed `[1, S, S]` array of one view, or None when missing or unreadable."""
        if source is None or source.path in self.failed:
            return None
        try:
            if self.cache is None:
                return self._decode(source.path)
            return self.cache.get_or_create(source.path, lambda: self._decode(source.path))
        except (ImageError, OSError) as err:
            reason = err.reason if isinstance(err, ImageError) else (err.strerror or str(err))
            self.failed[source.path] = reason
            view = source.view.value if source.view is not None else "image"
            logger.warning("%s: %s view of study %s dropped: %s", source.path, view, source.study_id, reason)
            return None

    def _decode(self, path: Path) -> np.ndarray:
        return self.runner(decode_view, path, self.config, self.apply_voi, self.reduced)

    def _seed_worker(self) -> None:
        """Give each DataLoader worker (and each epoch's workers) their own augmentation draws."""
        info = get_worker_info()
        if info is not None and self._worker_seed != (info.id, info.seed):
            self.transform.set_random_state(seed=info.seed % (2**31 - 1))
            self._worker_seed = (info.id, info.seed)
