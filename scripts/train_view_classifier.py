"""Train the bundled view classifier on phantom films; the same seed gives the same weights.

    nice python scripts/train_view_classifier.py            # writes sample_data/models/view_classifier.safetensors

Data: both views of `--train-patients` phantom patients (sample_data.view_set.render_films),
`--draws` augmented copies of each plus a quarter as many "other" pictures per draw; a held-out set
of `--val-patients` other patients, augmented once without the regularising blobs and cut-outs, is
the validation set. Each member of the ensemble trains on its own shuffles; after the last epoch
(no checkpoint picking) the temperature is fitted on the validation set's flip-averaged
logits, and the abstention threshold is the least calibrated probability at which at most
`--max-wrong` of the validation films are called the wrong view, and never below `--min-threshold`.
Rendered films are cached under `--cache` (keyed by the phantom's source), so reruns start training
at once. See sample_data/models/VIEW_CLASSIFIER.md.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import logging
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

import sample_data
from models.viewnet import ViewNet, ViewNetConfig, load_viewnet, save_viewnet
from pipeline.view_classifier import VIEW_CLASSIFIER, decide, flip_averaged_logits, prepare
from sample_data.view_set import CLASSES, Films, augment, other_film, render_films

log = logging.getLogger("train_view_classifier")
_VAL_STREAM = 1  # seed offset of the validation patients (bench/views.py tests on seed 2026)


def _render(chunk: tuple[int, int, int, int]) -> Films:
    return render_films(*chunk)


def films(n_patients: int, seed: int, size: int, cache: Path | None, workers: int = 1) -> Films:
    """Render (or load from the cache) both views of `n_patients` phantom patients."""
    key = hashlib.sha256(
        phantom_source_digest().encode() + f"{n_patients}-{seed}-{size}".encode()
    ).hexdigest()[:16]
    path = cache / f"films-{key}.npz" if cache else None
    if path is not None and path.is_file():
        data = np.load(path)
        ends = np.cumsum([rows * cols for rows, cols in data["shapes"]])
        flat = np.split(data["pixels"], ends[:-1])
        images = [f.reshape(shape) for f, shape in zip(flat, data["shapes"], strict=True)]
        return Films(images, data["labels"], data["patients"])
    start = time.perf_counter()
    chunks = [(min(100, n_patients - first), seed, size, first) for first in range(0, n_patients, 100)]
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        parts = list(pool.map(_render, chunks))
    rendered = Films(
        [f for part in parts for f in part.images],
        np.concatenate([part.labels for part in parts]),
        np.concatenate([part.patients for part in parts]),
    )
    log.info("rendered %d films in %.0f s", len(rendered.images), time.perf_counter() - start)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(  # films differ in shape: one flat array and the shapes, no pickles
            path,
            pixels=np.concatenate([f.ravel() for f in rendered.images]),
            shapes=np.array([f.shape for f in rendered.images]),
            labels=rendered.labels,
            patients=rendered.patients,
        )
    return rendered


def phantom_source_digest() -> str:
    """A digest of the phantom's code and `render_films`: a changed phantom never reuses cached films."""
    digest = hashlib.sha256(inspect.getsource(render_films).encode())
    for file in sorted(Path(sample_data.__file__).parent.glob("*.py")):
        if file.name != "view_set.py":  # the augmentation does not change the rendered films
            digest.update(file.read_bytes())
    return digest.hexdigest()


def _augment_one(job: tuple[int, int, int, bool]) -> tuple[np.ndarray, int]:
    """Film `index` of the worker's films (or an "other" picture past their end), augmented and prepared."""
    seed, draw, index, regularise = job
    source = _WORKER_FILMS
    rng = np.random.default_rng([seed, draw, index])
    if index < len(source.images):
        image, label = augment(source.images[index], rng, regularise=regularise), int(source.labels[index])
    else:
        image, label = other_film(source.images, rng), CLASSES.index("other")
    return np.round(prepare(image, _WORKER_SIZE) * 255.0).astype(np.uint8), label


_WORKER_FILMS: Films
_WORKER_SIZE: int


def _init_worker(source: Films, size: int) -> None:
    global _WORKER_FILMS, _WORKER_SIZE
    _WORKER_FILMS, _WORKER_SIZE = source, size
    torch.set_num_threads(1)


def augmented_set(
    source: Films, seed: int, draws: int, size: int, workers: int, *, regularise: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """`draws` augmented copies of every film plus a quarter as many "other" pictures per draw, prepared
    as the classifier sees them: `[N, 1, size, size]` normalised inputs and their class indices."""
    n_other = len(source.images) // 4
    jobs = [
        (seed, draw, index, regularise)
        for draw in range(draws)
        for index in range(len(source.images) + n_other)
    ]
    start = time.perf_counter()
    with ProcessPoolExecutor(max(1, workers), initializer=_init_worker, initargs=(source, size)) as pool:
        items = list(pool.map(_augment_one, jobs, chunksize=64))
    log.info("augmented %d pictures in %.0f s", len(items), time.perf_counter() - start)
    x = torch.from_numpy(np.stack([image for image, _ in items])).float().div_(255.0)[:, None]
    return normalise(x), torch.tensor([label for _, label in items])


def normalise(prepared: torch.Tensor, config: ViewNetConfig | None = None) -> torch.Tensor:
    config = config or ViewNetConfig()
    return (prepared - config.norm_mean) / config.norm_std


def fit(model: ViewNet, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace) -> None:
    """Each member on its own shuffles (seeded), mirrored at random, AdamW with a cosine schedule."""
    for number, member in enumerate(model.members):
        generator = torch.Generator().manual_seed(args.seed * 100 + number)
        optimiser = torch.optim.AdamW(member.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        steps = args.epochs * math.ceil(len(x) / args.batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, args.lr, total_steps=steps, pct_start=0.1)
        member.train()
        for _ in range(args.epochs):
            order = torch.randperm(len(x), generator=generator)
            for first in range(0, len(x), args.batch_size):
                index = order[first : first + args.batch_size]
                batch = x[index]
                mirror = torch.rand(len(batch), 1, 1, 1, generator=generator) < 0.5
                batch = torch.where(mirror, batch.flip(-1), batch)
                loss = F.cross_entropy(member(batch), y[index], label_smoothing=args.label_smoothing)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
        member.eval()
        log.info("member %d (%d px) trained", number + 1, member.side)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature that minimises the negative log-likelihood (LBFGS on its logarithm)."""
    logits = logits.clone()  # a normal tensor: inference-mode tensors cannot enter autograd
    log_t = torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimiser.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def wrong_rate(probs: torch.Tensor, labels: torch.Tensor, threshold: float) -> float:
    """Share of chest films given the other view (the targets are set on chest films; "other" rows are
    counted in the confusion table)."""
    films = labels < 2
    probs, labels = probs[films], labels[films]
    called = decide(probs, threshold)
    return float(((called >= 0) & (called != labels.numpy())).mean())


def choose_threshold(probs: torch.Tensor, labels: torch.Tensor, max_wrong: float, floor: float) -> float:
    """The least threshold (0.01 steps) whose wrong rate is at most `max_wrong`, not below `floor`."""
    for threshold in np.arange(floor, 0.995, 0.01):
        if wrong_rate(probs, labels, float(threshold)) <= max_wrong:
            return round(float(threshold), 2)
    return 0.99


def confusion(probs: torch.Tensor, labels: torch.Tensor, threshold: float) -> dict[str, dict[str, int]]:
    """Rows: true class; columns: frontal, lateral, unknown."""
    called = decide(probs, threshold)
    table: dict[str, dict[str, int]] = {}
    for index, name in enumerate(CLASSES):
        rows = called[labels.numpy() == index]
        table[name] = {
            "frontal": int((rows == 0).sum()),
            "lateral": int((rows == 1).sum()),
            "unknown": int((rows == -1).sum()),
        }
    return table


def train(args: argparse.Namespace) -> Path:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    base = ViewNetConfig(
        classes=CLASSES, image_size=args.image_size, resolutions=tuple(args.resolutions), hidden=args.hidden
    )
    cache = Path(args.cache) if args.cache else None
    train_films = films(args.train_patients, args.seed, args.render_size, cache, args.workers)
    val_films = films(args.val_patients, args.seed + _VAL_STREAM, args.render_size, cache, args.workers)
    x, y = augmented_set(train_films, args.seed, args.draws, args.image_size, args.workers)
    # Validation looks like real exports: the same augmentation without the blobs and cut-outs that
    # only regularise training. It calibrates and sets the threshold, so it must not be harsher than reality.
    val_x, val_y = augmented_set(
        val_films, args.seed + _VAL_STREAM, 1, args.image_size, args.workers, regularise=False
    )
    start = time.perf_counter()
    model = ViewNet(base)
    fit(model, x, y, args)
    logits = flip_averaged_logits(model.eval(), val_x)
    temperature = fit_temperature(logits, val_y)
    probs = torch.softmax(logits / temperature, dim=1)
    threshold = choose_threshold(probs, val_y, args.max_wrong, args.min_threshold)
    table = confusion(probs, val_y, threshold)
    log.info("temperature %.3f, threshold %.2f; validation confusion %s", temperature, threshold, table)
    model.config = replace(
        base,
        temperature=round(temperature, 4),
        threshold=threshold,
        provenance={
            "trained": date.today().isoformat(),
            "script": "scripts/train_view_classifier.py",
            "seed": args.seed,
            "train_patients": args.train_patients,
            "val_patients": args.val_patients,
            "draws": args.draws,
            "render_size": args.render_size,
            "epochs": args.epochs,
            "phantom_source_sha256": phantom_source_digest()[:16],
            "val_confusion": table,
            "train_minutes": round((time.perf_counter() - start) / 60, 1),
        },
    )
    out = save_viewnet(model, args.out)
    reloaded = load_viewnet(out)
    same = torch.allclose(
        torch.softmax(flip_averaged_logits(reloaded, val_x) / temperature, 1), probs, atol=0.02
    )
    log.info("wrote %s (%.2f MB); reloaded float16 weights agree: %s", out, out.stat().st_size / 2**20, same)
    print(json.dumps(model.config.provenance, indent=2))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-patients", type=int, default=2000, help="phantom patients (two films each)")
    p.add_argument("--val-patients", type=int, default=300)
    p.add_argument("--render-size", type=int, default=256, help="phantom films are rendered at this size")
    p.add_argument("--image-size", type=int, default=96, help="the prepared input's side")
    p.add_argument("--resolutions", type=int, nargs="+", default=[20, 24, 24, 32], help="one member each")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--draws", type=int, default=6, help="augmented copies of each film")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-3)
    p.add_argument("--label-smoothing", type=float, default=0.05)
    p.add_argument("--max-wrong", type=float, default=0.02, help="films given the wrong view on validation")
    p.add_argument("--min-threshold", type=float, default=0.5)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="bfloat16 autocast")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="rendering and augmentation processes")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "twoview" / "view-films"))
    p.add_argument("--out", default=str(VIEW_CLASSIFIER))
    return p.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(parse_args())
