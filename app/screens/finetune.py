"""Fine-tune: start `twoview train` on a manifest, watch loss and AUROC per head live (epoch by epoch and
within the epoch), stop it, read the report (warned when validation is too small), use the result."""

from __future__ import annotations

import json
import re
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from app import common, markup, paths
from app.jobs import TrainJob, command_text, latest_job, list_jobs
from models.config import ModelConfig
from models.names import OUTPUTS
from pipeline.manifest import manifest_from_folder
from pipeline.metrics import small_validation_warning, unreliable_labels
from pipeline.runs import MONITOR, best_epoch, read_metrics
from pipeline.settings import ARCHITECTURES, TrainSettings

state = st.session_state
HEAD_WEIGHTS = ("joint", "frontal", "lateral")  # the order of `TrainSettings.head_weights_*`
STARTS = {
    "ImageNet DenseNet121 (downloaded once)": "imagenet",
    "the active model": "active",
    "scratch (random weights)": "scratch",
    "another checkpoint, DenseNet121 weights or URL": "other",
}


def epoch_means(points: list[tuple[int, float]]) -> dict[int, float]:
    sums: dict[int, list[float]] = {}
    for epoch, value in points:
        sums.setdefault(epoch, []).append(value)
    return {epoch: sum(v) / len(v) for epoch, v in sums.items()}


def curves(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Loss (train mean, validation) and validation AUROC per head, one row per epoch."""
    series = read_metrics(run_dir)
    loss = pd.DataFrame(
        {
            name: epoch_means(series.get(key, []))
            for name, key in (("train", "train/loss"), ("validation", "val/loss"))
        }
    )
    auroc = pd.DataFrame({head: epoch_means(series.get(f"val/auroc_{head}", [])) for head in OUTPUTS})
    for frame in (loss, auroc):
        frame.index.name = "epoch"
    return loss.sort_index(), auroc.sort_index()


def planned_epochs(job: TrainJob) -> int:
    """The epochs the run was started with (its command's --epochs, else the default)."""
    words = job.command
    if "--epochs" in words[:-1]:
        try:
            return int(words[words.index("--epochs") + 1])
        except ValueError:
            pass
    return int(TrainSettings.defaults()["epochs"])


def epoch_chart(frame: pd.DataFrame, title: str, epochs: int, domain: list[float] | None = None) -> alt.Chart:
    """One line per column with a point per epoch, epochs counted from 1 on whole-number ticks."""
    long = frame.reset_index().melt("epoch", var_name="series", value_name="value").dropna()
    long["epoch"] = long["epoch"] + 1
    return (
        alt.Chart(long)
        .mark_line(point=alt.OverlayMarkDef(size=60))
        .encode(
            x=alt.X(
                "epoch:Q",
                scale=alt.Scale(domain=[1, max(epochs, int(long["epoch"].max()), 2)]),
                axis=alt.Axis(format="d", tickMinStep=1, title="epoch"),
            ),
            y=alt.Y("value:Q", title=title, scale=alt.Scale(domain=domain) if domain else alt.Undefined),
            color=alt.Color("series:N", title=None),
            tooltip=["epoch:Q", "series:N", alt.Tooltip("value:Q", format=".3f")],
        )
        .properties(height=260)
    )


def show_curves(job: TrainJob) -> None:
    loss, auroc = curves(job.run_path)
    epochs = planned_epochs(job)
    left, right = st.columns(2)
    with left:
        st.markdown("**Loss**")
        if loss.dropna(how="all").empty:
            st.caption("No loss logged yet.")
        else:
            st.altair_chart(epoch_chart(loss, "loss", epochs), width="stretch")
    with right:
        st.markdown("**Validation AUROC per head**")
        if auroc.dropna(how="all").empty:
            st.caption("No validation yet (it runs at the end of each epoch).")
        else:
            st.altair_chart(epoch_chart(auroc, "AUROC", epochs, [0.0, 1.0]), width="stretch")
    best = best_epoch(read_metrics(job.run_path), MONITOR)
    if best is not None:
        st.markdown(
            f"**Best epoch so far: {best[0] + 1}** (validation macro AUROC {best[1]:.3f}); "
            "its weights are the run's best.safetensors."
        )


def show_progress(job: TrainJob) -> None:
    """Where the running epoch is, read from the training log."""
    found = job.progress()
    epochs = planned_epochs(job)
    if found is None:
        st.progress(0.0, text="Starting: reading the data and building the model…")
        return
    epoch, done, total = found
    st.progress(min(done / max(total, 1), 1.0), text=f"Epoch {epoch} of {epochs}: batch {done} of {total}")


def validation_warning(job: TrainJob) -> str | None:
    """The report's warning when validation was too small to trust its AUROCs and thresholds."""
    try:
        report = json.loads((job.run_path / "report.json").read_text())
        unreliable = unreliable_labels(
            int(report["studies"]), report["positives"], report["negatives"], report["labels"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return small_validation_warning(int(report["studies"]), unreliable)


def show_job(job: TrainJob) -> None:
    """Status, live curves and the log; reruns itself every two seconds while training runs."""
    state_name = job.state
    st.markdown(f"**Run** {markup.text(job.run_dir)} — **{state_name}** (pid {job.pid})")
    st.caption(markup.text(command_text(job.command)))
    if state_name == "running":
        show_progress(job)
    show_curves(job)
    with st.expander("Training log", expanded=state_name == "failed"):
        st.code(job.log_tail(30) or "(nothing yet)", language=None)
    if state_name == "running":
        if st.button("Stop", type="secondary", key="stop"):
            job.stop()
            st.rerun()
        state.train_shown_running = True
        return
    if state.pop("train_shown_running", False):
        st.rerun()
    show_outcome(job, state_name)


def show_outcome(job: TrainJob, state_name: str) -> None:
    if state_name == "failed":
        st.error("Training ended without a report; see the training log above.")
        return
    report = job.report()
    warning = validation_warning(job)
    if warning:
        st.warning(f"**Validation too small to trust**: {markup.text(warning)}", icon=":material/warning:")
    if report is None:
        st.warning("Training was stopped before it finished; no report was written.")
    else:
        with st.container(border=True):
            st.markdown(demote_headings(markup.document(report)))
    if job.best.is_file():
        if common.active_model() == job.best:
            st.success(f"{markup.text(job.best)} is the active model of this browser session.")
        elif st.button("Use this model", type="primary", key="use", help="For this browser session only."):
            common.set_active_model(job.best)
            st.success(
                f"{markup.text(job.best)} is now the active model of this browser session "
                "(other users keep theirs)."
            )


def demote_headings(markdown: str) -> str:
    """Report headings two levels down, so they sit under the page's own."""
    return re.sub(r"^(#{1,4}) ", r"##\1 ", markdown, flags=re.MULTILINE)


def manifest_input() -> str | tuple[str, str] | None:
    """The manifest to train on, as typed: a manifest CSV, or a folder and a labels table (checked at Start)."""
    kind = st.radio("Training data", ["A manifest CSV", "A folder and a labels CSV"], horizontal=True)
    st.caption("Inside " + ", ".join(markup.text(d) for d in paths.data_dirs()) + ".")
    if kind == "A manifest CSV":
        text = st.text_input(
            "Manifest (study_id, patient_id, frontal, lateral, one column per label)",
            value=str(common.SAMPLE_STUDIES / "labels.csv"),
        )
        return text or None
    folder = st.text_input("Folder of studies (scanned recursively)", value="")
    labels = st.text_input("Labels CSV (study_id + one column per label: 1, 0 or blank)", value="")
    if not folder or not labels:
        return None
    return folder, labels


def options_input(active: Path) -> dict[str, object]:
    """The hyper-parameters that matter, as `TrainSettings` fields; defaults come from `TrainSettings`."""
    default = TrainSettings.defaults()
    start_name = st.selectbox("Starting model", list(STARTS), index=0)
    start = STARTS[start_name]
    arch = default["arch"]
    start_size = ModelConfig().image_size
    if start == "active":
        start = str(active)
        if common.model_ready(active):
            start_size = common.model_config(active).image_size
    elif start == "other":
        start = st.text_input("Checkpoint path or URL", value="")
    else:
        arch = st.selectbox("Network", list(ARCHITECTURES))
    one, two, three, four = st.columns(4)
    epochs = one.number_input("Epochs", 1, 1000, default["epochs"])
    lr = two.number_input("Learning rate", 1e-6, 1.0, default["lr"], format="%.0e", step=1e-4)
    batch = three.number_input("Batch size", 1, 1024, default["batch_size"])
    size = None
    if four.checkbox("Set the image size", help="Otherwise the starting model's size is kept."):
        size = int(four.number_input("Image size (px)", 32, 2048, start_size, step=32))
    else:
        known = start in ("imagenet", "scratch") or start == str(active)
        four.caption(
            f"Image size: the starting model's ({start_size} px)" if known else "Image size: the checkpoint's"
        )
    one, two = st.columns(2)
    dropout = one.slider(
        "View dropout (share of two-view studies trained with one view)", 0.0, 1.0, default["view_dropout"]
    )
    workers = two.number_input("Decoding workers", 0, 16, default["workers"])
    st.markdown("**Head weights** (loss weight of each head, ramped from start to end)")
    begin, end = [], []
    for head, columns, first, last in zip(
        HEAD_WEIGHTS, st.columns(3), default["head_weights_start"], default["head_weights_end"], strict=True
    ):
        begin.append(columns.number_input(f"{head} at start", 0.0, 10.0, first, key=f"hw0-{head}"))
        end.append(columns.number_input(f"{head} at end", 0.0, 10.0, last, key=f"hw1-{head}"))
    ramp = st.number_input("Ramp epochs", 0, 1000, default["ramp_epochs"])
    return {
        "start": start,
        "arch": arch,
        "epochs": int(epochs),
        "lr": float(lr),
        "batch_size": int(batch),
        "image_size": size,
        "view_dropout": float(dropout),
        "head_weights_start": tuple(begin),
        "head_weights_end": tuple(end),
        "ramp_epochs": int(ramp),
        "workers": int(workers),
    }


def start(source: str | tuple[str, str], options: dict[str, object], active: Path) -> None:
    """Start training on data inside the data folders, from a manifest the app wrote and checked."""
    runs, jobs, manifests = common.folder("runs"), common.folder("jobs"), common.folder("manifests")
    if isinstance(source, tuple):
        folder = paths.readable_path(source[0], "folder")
        labels = paths.readable_path(source[1], "labels CSV")
        manifest = manifest_from_folder(
            folder, labels, manifests / f"{folder.name}.csv", runner=common.session().reader
        )
    else:
        manifest = paths.confined_manifest(source, manifests)
    options = {**options, "start": start_weights(str(options["start"]), active)}
    job = TrainJob.start(TrainSettings(manifest=str(manifest), **options), runs, jobs)
    state.train_job = job.record


def start_weights(start: str, active: Path) -> str:
    """A start word as it is; the active model; else a weights file inside the data folders (no URL)."""
    if start in STARTS.values() or start == str(active):
        return start
    if start.startswith(("http://", "https://")):
        raise paths.PathError(
            "the app does not download weights: import them on the server with 'twoview import-weights', "
            "then give that file"
        )
    return str(paths.readable_path(start, "checkpoint or weights file", also=[common.BUNDLED_MODELS]))


def current_job() -> TrainJob | None:
    """The job this session started or picked, else the running (or newest) one: a reload reattaches."""
    jobs = common.folder("jobs")
    record = state.get("train_job")
    if record and Path(record).is_file():
        return TrainJob.load(record)
    return latest_job(jobs)


def pick_run(job: TrainJob) -> None:
    """A picker among earlier runs, when there are several."""
    jobs = list_jobs(common.folder("jobs"))
    if len(jobs) < 2:
        return
    names = [j.record for j in jobs]
    chosen = st.selectbox("Run", names, index=names.index(job.record), format_func=lambda r: Path(r).stem)
    if chosen != job.record:
        state.train_job = chosen
        st.rerun()


def new_run_form() -> None:
    source = manifest_input()
    options = options_input(common.active_model())
    if st.button("Start training", type="primary", disabled=source is None):
        start(source, options, common.active_model())
        st.rerun()


def main() -> None:
    st.title("Fine-tune")
    job = current_job()
    running = job is not None and job.running
    if job is not None:
        pick_run(job)
        st.fragment(show_job, run_every=2.0 if running else None)(job)
    if not running:
        with st.expander("New training run", expanded=job is None):
            new_run_form()


with common.user_errors():
    main()
