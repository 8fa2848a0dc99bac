"""The `twoview` command line: one subcommand per job, each a thin call into `pipeline`.

Every error twoview raises on purpose is printed as one line naming what went wrong and the
command exits with status 2; a traceback reaches the user only for a bug (`--debug` shows it).
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from models.errors import ModelError
from pipeline.errors import TwoviewError
from pipeline.settings import ARCHITECTURES, TrainSettings, cli_flag

if TYPE_CHECKING:
    from pipeline.studies import ScanResult

__all__ = ["build_parser", "main"]

log = logging.getLogger("twoview")


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector off while a command imports torch, MONAI and pydicom, then the objects
    made so far frozen out of its way. Each full collection during those imports walked every object
    they had made: 0.3-0.5 s of `twoview predict`'s start, four times over (bench/RESULTS.md). Frozen
    objects are still freed when no longer referenced; only import-time reference cycles stay.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _version() -> str:
    try:
        return version("twoview")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _sample_data(args: argparse.Namespace) -> int:
    from pipeline.progress import progress_bar
    from sample_data.generate import write_dataset

    with progress_bar(args.studies, "studies") as bar:
        summary = write_dataset(
            args.out, n_studies=args.studies, seed=args.seed, size=args.size, progress=bar.update
        )
    routes = ", ".join(f"{n} {route.replace('_', ' ')}" for route, n in summary.routes.items())
    findings = ", ".join(f"{name} {n}" for name, n in summary.findings.items())
    print(
        f"wrote {summary.studies} phantom studies ({routes}; {summary.files} files) into {summary.out_dir} "
        f"in {summary.seconds:.1f} s\npositive findings: {findings}\nlabels: {summary.out_dir / 'labels.csv'}"
    )
    return 0


def _add_sample_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample-data",
        help="write synthetic two-view phantom studies as DICOM, with labels.csv and truth.csv",
        description="Write N synthetic chest phantom studies (frontal and/or lateral DICOM files) with known findings.",
    )
    p.add_argument("--out", required=True, help="folder to write the studies into")
    p.add_argument("--studies", type=int, default=24, help="number of studies (default: 24)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same bytes")
    p.add_argument("--size", type=int, default=1024, help="longest image side in pixels (default: 1024)")
    p.set_defaults(handler=_sample_data)


def _predict(args: argparse.Namespace) -> int:
    if args.dicomweb:
        return _predict_dicomweb(args)
    if args.study or args.since or args.store:
        raise TwoviewError("--study, --since and --store are for studies on a PACS: give --dicomweb URL too")
    if args.engine != "ray" and (args.address or args.ray_actors):
        raise TwoviewError("--address and --ray-actors are for --engine ray")
    if (args.folder is None) == (args.manifest is None):
        raise TwoviewError("give either a FOLDER to scan or --manifest CSV (one of them, not both)")
    if args.images is not None and args.manifest is None:
        raise TwoviewError("--images is for --manifest; a FOLDER is scanned as it is")
    if args.dicom_heatmaps and not args.dicom_out:
        raise TwoviewError(
            "--dicom-heatmaps adds Grad-CAM captures to the DICOM results: give --dicom-out DIR too"
        )
    with _collector_paused():
        from pipeline.deidentify import Deidentifier, scrubbed_logs
        from pipeline.manifest import read_manifest
        from pipeline.shards import parse_shard
        from pipeline.sources import scan_with_progress

        deidentify = Deidentifier.from_env() if args.deidentify else None
        if args.manifest is not None:
            from pipeline.predict import Predictor, model_file, predict_folder

            source = read_manifest(args.manifest, args.images, labels=())
        else:
            # The scan needs no torch: it runs (on worker processes) while torch and MONAI import here.
            if deidentify is not None:
                deidentify = deidentify.under(args.folder)

            def scan() -> ScanResult:
                with scrubbed_logs(deidentify):
                    return scan_with_progress(Path(args.folder))

            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="scan") as background:
                scanning = background.submit(scan)
                from pipeline.predict import Predictor, model_file, predict_folder
            source = scanning.result()
    output = Path(args.output)
    if not output.parent.exists():
        log.info("creating the output folder %s", output.parent)
    model_path = model_file(args.model)
    predictor = Predictor(model_path, device=args.device, fast=args.fast)  # loads once its workers decode
    sink = _dicom_results(args, predictor, model_path, deidentify, args.dicom_out)
    shard = parse_shard(args.shard) if args.shard else None
    if args.engine == "ray":
        from models.checkpoint import check
        from pipeline.ray_engine import predict_folder_ray

        check(model_path)  # refused here, before a cluster starts; each actor loads its own copy
        summary = predict_folder_ray(
            source,
            output,
            model_path,
            address=args.address,
            actors=args.ray_actors,
            actor_cpus=args.ray_actor_cpus,
            device=args.device,
            batch_size=args.batch_size,
            fast=args.fast,
            shard=shard,
            deidentify=deidentify,
            sink=sink,
        )
        return _check_summary(summary, args.folder or args.manifest)
    summary = predict_folder(
        source,
        output,
        model_path,
        batch_size=args.batch_size,
        workers=args.workers,
        predictor=predictor,
        shard=shard,
        deidentify=deidentify,
        sink=sink,
    )
    return _check_summary(summary, args.folder or args.manifest)


def _check_summary(summary, source: str) -> int:
    """A run that found nothing to predict, or could predict none of it, is an error (exit 2)."""
    if summary.studies == 0:
        raise TwoviewError(
            f"no studies to predict in {source}"
            + (
                f": all {summary.set_aside} files were set aside, see {summary.errors_output}"
                if summary.set_aside
                else ": it holds no image files"
            )
        )
    if summary.predicted + summary.skipped == 0:
        raise TwoviewError(
            f"none of the {summary.studies} studies could be predicted (no readable view); see {summary.errors_output}"
        )
    return 0


def _predict_dicomweb(args: argparse.Namespace) -> int:
    with _collector_paused():
        from pipeline.deidentify import Deidentifier
        from pipeline.dicomweb import Pacs, parse_date
        from pipeline.pacs import predict_pacs, working_folder
        from pipeline.predict import Predictor, load_model

    if args.folder or args.manifest or args.shard:
        raise TwoviewError(
            "--dicomweb reads the studies from the PACS: give no FOLDER, --manifest or --shard"
        )
    if args.engine == "ray":
        raise TwoviewError(
            "--dicomweb runs on this machine; --engine ray is for folders on a shared file system"
        )
    if args.study and args.since:
        raise TwoviewError("give --study UID ... or --since DATE, not both")
    if args.store and args.deidentify:
        raise TwoviewError(
            "--store puts the results into each patient's study in the PACS, where de-identified results "
            "belong to no study; with --deidentify write them with --dicom-out DIR instead"
        )
    if args.dicom_heatmaps and not (args.dicom_out or args.store):
        raise TwoviewError(
            "--dicom-heatmaps adds Grad-CAM captures to the DICOM results: give --dicom-out or --store"
        )
    since = parse_date(args.since) if args.since else None
    pacs = Pacs.from_env(args.dicomweb, attempts=args.dicomweb_attempts)
    deidentify = Deidentifier.from_env() if args.deidentify else None
    model, model_path = load_model(args.model)  # refused now, before any study is fetched
    predictor = Predictor(model, device=args.device, fast=args.fast, copy_model=False)
    output = Path(args.output)
    folder = args.dicom_out or (working_folder(output) / "outbox" if args.store else None)
    predict_pacs(
        pacs,
        output,
        predictor,
        model_path=model_path,
        study_uids=args.study or (),
        since=since,
        results=_dicom_results(args, predictor, model_path, deidentify, folder),
        store=args.store,
        keep_results=bool(args.dicom_out),
        deidentify=deidentify,
        batch_size=args.batch_size,
        workers=args.workers,
        chunk=args.fetch_chunk,
    )
    return 0


def _dicom_results(args: argparse.Namespace, predictor, model_path: Path, deidentify, folder):
    """The DICOM results writer into `folder` (SRs, and Grad-CAM captures with `--dicom-heatmaps`), or None."""
    if not folder:
        return None
    from pipeline.dicom_results import DicomResults
    from pipeline.explain import Explainer
    from pipeline.sr import ModelIdentity

    return DicomResults(
        folder,
        ModelIdentity.from_checkpoint(model_path, predictor.config),
        predictor.config.thresholds,
        deidentify=deidentify,
        explainer=Explainer(predictor.model) if args.dicom_heatmaps else None,
    )


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="predict every study in a folder (or a manifest) into a CSV or JSON Lines file",
        description="Scan a folder recursively, group its images into studies and write one row per study: "
        "route, files used, and each label's final and per-head probabilities. Rerunning with the same "
        "output resumes; files set aside are listed in <output stem>.errors.csv.",
    )
    p.add_argument("folder", nargs="?", help="folder of DICOM (or PNG/JPEG) files, scanned recursively")
    p.add_argument("--model", help="a .safetensors checkpoint (default: the bundled demo model)")
    p.add_argument(
        "-o", "--output", default="predictions.csv", help="out.csv or out.jsonl (default: predictions.csv)"
    )
    p.add_argument(
        "--batch-size", type=int, help="studies per model call (default: 8 on the CPU, 64 on a GPU)"
    )
    p.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: auto (CUDA if any)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="decoding processes (default: one per core on the CPU, where they take turns with the model; "
        "one per core but one with a GPU; 0: decode in this process)",
    )
    p.add_argument(
        "--fast",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the fast path: channels-last and bfloat16 where supported (--no-fast: float32)",
    )
    p.add_argument("--manifest", help="a manifest CSV (study_id, frontal, lateral) instead of a folder")
    p.add_argument("--images", help="folder the manifest's paths are relative to (default: the manifest's)")
    p.add_argument(
        "--shard",
        metavar="K/N",
        help="predict only shard K of N (K from 1), chosen by study id; join the outputs with 'twoview merge'",
    )
    p.add_argument(
        "--deidentify",
        action="store_true",
        help="write keyed pseudonyms for study ids and file paths (outputs and logs) and for the UIDs and "
        "patient of DICOM results; the secret key comes from $TWOVIEW_DEIDENTIFY_KEY, and the same key "
        "gives the same pseudonyms",
    )
    p.add_argument(
        "--dicom-out",
        metavar="DIR",
        help="also write a DICOM Structured Report per predicted DICOM study into DIR (<study>.sr.dcm): "
        "every label's probabilities, calls and route, the model, and the source images referenced",
    )
    p.add_argument(
        "--dicom-heatmaps",
        action="store_true",
        help="with --dicom-out: a Secondary Capture of the Grad-CAM overlay per positive call and view, "
        "labelled NOT FOR DIAGNOSIS",
    )
    ray = p.add_argument_group("many machines (Ray)")
    ray.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this machine; ray: Ray Data on a Ray cluster, decoding in CPU tasks and the model in "
        'GPU or CPU actors (pip install "twoview[ray]"; the folder must be on a file system every node reads)',
    )
    ray.add_argument(
        "--address",
        help="the Ray cluster to join (e.g. auto, or ray://head:10001; default: a running one, else a new local one)",
    )
    ray.add_argument(
        "--ray-actors", type=int, metavar="N", help="model copies (default: one per GPU, else 1)"
    )
    ray.add_argument(
        "--ray-actor-cpus",
        type=float,
        default=1.0,
        metavar="C",
        help="CPUs each model actor reserves (default: 1)",
    )
    pacs = p.add_argument_group(
        "studies on a PACS (DICOMweb)",
        "Credentials come from the environment only: $TWOVIEW_DICOMWEB_TOKEN (a bearer token), or "
        "$TWOVIEW_DICOMWEB_USER and $TWOVIEW_DICOMWEB_PASSWORD (HTTP basic).",
    )
    pacs.add_argument(
        "--dicomweb",
        metavar="URL",
        help="predict studies of this DICOMweb server (its root, e.g. https://pacs/dicom-web) instead of a folder: "
        "found with QIDO-RS, fetched with WADO-RS a chunk at a time; rerun the same command to resume",
    )
    pacs.add_argument(
        "--study",
        nargs="+",
        action="extend",
        metavar="UID",
        help="these Study Instance UIDs (default: every CR/DX study)",
    )
    pacs.add_argument(
        "--since", metavar="DATE", help="the CR/DX studies acquired on or after DATE (YYYY-MM-DD)"
    )
    pacs.add_argument(
        "--store",
        action="store_true",
        help="send each study's DICOM results (the SR, and Grad-CAM captures with --dicom-heatmaps) back with STOW-RS",
    )
    pacs.add_argument(
        "--fetch-chunk",
        type=int,
        default=16,
        metavar="N",
        help="studies fetched, predicted and stored at a time (default: 16)",
    )
    pacs.add_argument(
        "--dicomweb-attempts",
        type=int,
        default=5,
        metavar="N",
        help="tries per request before the PACS counts as gone (default: 5, about 30 s of back-off)",
    )
    p.set_defaults(handler=_predict)


def _merge(args: argparse.Namespace) -> int:
    from pipeline.merge import merge_outputs

    print(merge_outputs(args.inputs, args.output, folder=args.folder))
    return 0


def _add_merge(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge",
        help="join the outputs of sharded 'twoview predict --shard K/N' runs",
        description="Join shard outputs (and their .errors.csv files) into one file sorted by study id; "
        "a study found in two shards is an error.",
    )
    p.add_argument("output", help="merged output (.csv or .jsonl, as the shards)")
    p.add_argument("inputs", nargs="+", help="the shard outputs")
    p.add_argument(
        "--folder", help="the predicted folder: also check that every study of it is in some shard"
    )
    p.set_defaults(handler=_merge)


def _train(args: argparse.Namespace) -> int:
    with _collector_paused():
        from pipeline.train import fit

    settings = _train_settings(args)
    if args.resume:
        given = sorted(f"--{name.replace('_', '-')}" for name in settings.changed())
        if given:
            raise TwoviewError(
                f"--resume continues {args.resume} with the settings it was started with; "
                f"drop {', '.join(given)} (or start a new run with --out)"
            )
        result = fit(TrainSettings(out_dir=args.resume), resume=True)
    else:
        if not settings.manifest or not settings.out_dir:
            raise TwoviewError("give --manifest and --out for a new run, or --resume RUN_DIR to continue one")
        result = fit(settings)
    if result is not None:
        print(f"best model: {result.best}")
        print(f"report: {result.out_dir / 'report.md'}")
    return 0


def _train_settings(args: argparse.Namespace) -> TrainSettings:
    """The `TrainSettings` the train options name (each option's dest is a field name)."""
    values = {f.name: getattr(args, f.name) for f in fields(TrainSettings)}
    return TrainSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


_FIELD_TYPES = {"str": str, "int": int, "float": float}


class _DefaultsHelp(argparse.HelpFormatter):
    """Help that names each option's default, unless there is none or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "(default" in text or default in (None, "", argparse.SUPPRESS) or isinstance(default, bool):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {shown})"


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune on a labelled manifest (Lightning; multi-GPU/multi-node with --strategy ddp)",
        description="Fine-tune a two-view model on a manifest (study_id, frontal, lateral, one column per label).",
        formatter_class=_DefaultsHelp,
    )
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its last checkpoint")
    for f in fields(TrainSettings):
        _add_setting(p, f)
    p.set_defaults(handler=_train)


def _add_setting(parser: argparse.ArgumentParser, f) -> None:
    """One `TrainSettings` field as an option: its flag, type, help and default come from the field."""
    meta = {k: v for k, v in f.metadata.items() if k != "flag"}
    flag = cli_flag(f.name)
    kind = str(f.type).replace(" | None", "")
    if kind == "bool":
        parser.add_argument(flag, dest=f.name, action="store_false" if f.default else "store_true", **meta)
    elif kind.startswith("tuple["):
        parser.add_argument(flag, dest=f.name, type=float, nargs=3, default=f.default, **meta)
    else:
        parser.add_argument(flag, dest=f.name, type=_FIELD_TYPES[kind], default=f.default, **meta)


def _evaluate(args: argparse.Namespace) -> int:
    with _collector_paused():
        from pipeline.evaluate import evaluate

    report = evaluate(
        args.manifest,
        args.model,
        args.output,
        images_dir=args.images,
        batch_size=args.batch_size,
        bootstrap=args.bootstrap,
        device=args.device,
        fast=args.fast,
        workers=args.workers,
    )
    print(report.to_markdown("Evaluation"))
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="AUROC per label, head and route on a labelled manifest, with bootstrap intervals and ROC curves",
        description="Evaluate a model on a labelled manifest: report.md, report.json and roc_curves.png.",
    )
    p.add_argument("--manifest", required=True, help="labelled manifest CSV")
    p.add_argument("--model", help="a .safetensors checkpoint (default: the bundled demo model)")
    p.add_argument("-o", "--output", help="report folder (default: 'evaluation' beside the manifest)")
    p.add_argument("--images", help="folder the manifest's paths are relative to (default: the manifest's)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap rounds for the intervals (0: none)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument(
        "--fast",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="the fast path: channels-last and bfloat16 where supported (default: --no-fast, float32, "
        "so reported AUROCs are exact)",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="decoding processes (default: one per core on the CPU, one per core but one with a GPU)",
    )
    p.set_defaults(handler=_evaluate)


def _import_weights(args: argparse.Namespace) -> int:
    from models.config import ModelConfig
    from models.importing import import_weights
    from models.pretrained import InputNorm

    norm = None
    if args.norm is not None:
        norm = InputNorm(args.norm[0], args.norm[1], "given with --norm")
    expect = ModelConfig.tiny() if args.arch == "tiny" else ModelConfig()
    report = import_weights(args.source, args.output, args.sha256, expect=expect, norm=norm)
    print(report.summary())
    print(f"start training from it: twoview train --start {report.output} ...")
    return 0


def _add_import_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-weights",
        help="convert DenseNet121 weights (TorchXRayVision, torchvision, MONAI; file or URL) for --start",
        description="Read DenseNet121 weights without running code from the file: a TorchXRayVision release "
        "(a pickled model), or a torchvision or MONAI state dict (.pth, .pt, .safetensors), from a file or "
        "a URL (downloaded once into the cache and checked against --sha256). Write them as a .safetensors "
        "state dict that records their source and the input normalisation they expect, for "
        "'twoview train --start OUT.safetensors'.",
    )
    p.add_argument("source", metavar="FILE_OR_URL", help="the weights file, or an http(s) URL")
    p.add_argument("-o", "--output", required=True, help="the .safetensors file to write")
    p.add_argument("--sha256", help="SHA-256 of the source file (required for a URL; checked for a file)")
    p.add_argument(
        "--arch",
        default="densenet121",
        choices=ARCHITECTURES,
        help="the network size the weights must have (default: densenet121)",
    )
    p.add_argument(
        "--norm",
        type=float,
        nargs=2,
        metavar=("MEAN", "STD"),
        help="record this normalisation of [0, 1] pixels instead of the source layout's (TorchXRayVision: "
        "0.5 0.00048828125, i.e. [-1024, 1024]; torchvision and MONAI: ImageNet's 0.449 0.226)",
    )
    p.set_defaults(handler=_import_weights)


def _app(args: argparse.Namespace) -> int:
    """Become `streamlit run app/Home.py` bound to --host:--port (exec: Ctrl-C and SIGTERM reach it directly)."""
    import os

    entry = Path(__file__).resolve().parents[1] / "app" / "Home.py"
    if not entry.is_file():
        raise TwoviewError(f"the app is not installed: {entry} is missing")
    env = _app_environment(args, dict(os.environ))
    command = [
        sys.executable, "-m", "streamlit", "run", str(entry),
        "--server.port", str(args.port),
        "--server.address", args.host,
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    print(f"twoview app: http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    os.execve(sys.executable, command, env)
    return 0  # not reached: exec replaced this process


def _app_environment(args: argparse.Namespace, env: dict[str, str]) -> dict[str, str]:
    """The app's environment: `--model` as TWOVIEW_MODEL, `--data-dir` folders added to TWOVIEW_DATA_DIRS."""
    import os

    if args.model:
        model = Path(args.model).expanduser().resolve()
        if not model.is_file():
            raise TwoviewError(f"{args.model}: model file not found")
        env["TWOVIEW_MODEL"] = str(model)
    if args.data_dir:
        folders = [Path(d).expanduser().resolve() for d in args.data_dir]
        missing = [str(d) for d in folders if not d.is_dir()]
        if missing:
            raise TwoviewError(f"--data-dir: no such folder: {', '.join(missing)}")
        given = [d for d in env.get("TWOVIEW_DATA_DIRS", "").split(os.pathsep) if d]
        env["TWOVIEW_DATA_DIRS"] = os.pathsep.join([*given, *map(str, folders)])
    return env


def _add_app(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "app",
        help="run the browser app (Predict, Batch, Fine-tune, Model) on this machine",
        description="Start the Streamlit app. It listens on 127.0.0.1 unless --host says otherwise.",
    )
    p.add_argument("--port", type=int, default=8501, help="port to listen on (default: 8501)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1: this machine)")
    p.add_argument("--model", help="the model to start with (default: $TWOVIEW_MODEL, else the demo model)")
    p.add_argument(
        "--data-dir",
        action="append",
        metavar="DIR",
        help="a folder the app's pages may read (Batch, Fine-tune); repeat for several; added to "
        "$TWOVIEW_DATA_DIRS (default: the bundled sample studies); the app's own folder always is one",
    )
    p.set_defaults(handler=_app)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_sample_data,
    _add_predict,
    _add_train,
    _add_import_weights,
    _add_evaluate,
    _add_merge,
    _add_app,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twoview",
        description="Chest X-ray prediction and fine-tuning with frontal and lateral views.",
    )
    parser.add_argument("--version", action="version", version=f"twoview {_version()}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def _configure_logging(debug: bool) -> None:
    """Our own loggers (and Lightning's progress notes) at INFO; other libraries only warn (openjpeg chatters)."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    for name in ("twoview", "pipeline", "models", "sample_data", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.debug)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    frozen = gc.get_freeze_count()
    try:
        return int(args.handler(args) or 0)
    except (TwoviewError, ModelError) as err:
        if args.debug:
            raise
        print(f"twoview {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"twoview {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if not frozen:  # a caller in the same process (a test, a notebook) gets its collector back whole
            gc.unfreeze()


if __name__ == "__main__":
    sys.exit(main())
