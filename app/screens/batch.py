"""Batch: predict every study in a folder on this server into a CSV or JSON Lines file, with live progress,
a time estimate and Stop; a reload (or another tab) finds the running job again."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import streamlit as st

from app import common, markup, paths
from app.jobs import BatchJob, latest_batch
from pipeline.deidentify import DEIDENTIFY_KEY_ENV, Deidentifier
from pipeline.outputs import output_format

state = st.session_state


def read_table(path: Path) -> pd.DataFrame | None:
    """The rows written so far (None before the file has any)."""
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return None
        if output_format(path) == "jsonl":
            return pd.read_json(path, lines=True, dtype=False)
        return pd.read_csv(path, dtype={"study_id": str})
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return None


def progress(job: BatchJob, rows: int) -> tuple[float, str]:
    if job.phase in ("starting", "scanning"):
        total = max(job.files_total, 1)
        return job.files_done / total, f"Reading files: {job.files_done} of {job.files_total or '?'}"
    if job.phase == "predicting":
        total = max(job.studies, 1)
        return min(rows / total, 1.0), f"Predicting: {rows} of {job.studies} studies"
    if job.phase == "done":
        return 1.0, f"Done: {markup.text(job.summary)}"
    if job.phase == "cancelled":
        return min(
            rows / max(job.studies, 1), 1.0
        ), f"Stopped: {rows} studies written (run it again to resume)"
    return 1.0, "Stopped by an error"


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def short_id(text: object, keep: int = 12) -> str:
    """A long id (a 64-character UID) cut to its last `keep` characters; the whole id is in the download."""
    text = str(text)
    return text if len(text) <= keep + 1 else f"…{text[-keep:]}"


def readable(rows: pd.DataFrame, folder: Path) -> tuple[pd.DataFrame, object]:
    """Short study ids, file names under the folder, each label's final probability; positives highlighted."""
    labels = [c.removesuffix("_call") for c in rows.columns if c.endswith("_call")]
    finals = [c for c in rows.columns if f"{c}_frontal" in rows.columns]
    table = pd.DataFrame({"study": rows["study_id"].map(short_id), "route": rows["route"]})
    for label in finals:
        table[label] = rows[label]
    for view in ("frontal", "lateral"):  # last: long paths would push the findings out of sight
        table[view] = rows[f"{view}_file"].map(lambda p: "" if pd.isna(p) else short(str(p), folder))
    threshold = {label: rows[f"{label}_threshold"] for label in labels}

    def colour(column: pd.Series) -> list[str]:
        if column.name not in finals:
            return [""] * len(column)
        limit = threshold.get(column.name, pd.Series(0.5, index=column.index))
        return [
            "background-color: #f8d7da; font-weight: bold" if v is not None and v >= t else ""
            for v, t in zip(column, limit, strict=True)
        ]

    return table, table.style.apply(colour, axis=0).format(precision=3, subset=finals, na_rep="—")


def short(path: str, folder: Path) -> str:
    return path.removeprefix(f"{folder}/")


def show_job(job: BatchJob) -> None:
    """Progress, the rows so far and the files set aside; reruns itself every second while running.

    Only an output the job accepted as its own is shown or offered for download.
    """
    rows = read_table(job.output) if job.accepted else None
    count = 0 if rows is None else len(rows)
    fraction, text = progress(job, count)
    if job.running:
        left = job.seconds_left(count)
        text += f" — about {duration(left)} left" if left is not None else " — estimating the time left…"
    st.progress(fraction, text=text)
    st.caption(
        f"Folder {markup.text(job.folder)}, started {time.strftime('%H:%M:%S', time.localtime(job.started))}"
    )
    if job.running and st.button(
        "Stop", key="batch_stop", help="Rows written so far stay; Start again resumes."
    ):
        job.cancel()
    if job.error:
        st.error(markup.text(job.error))
    if rows is not None and len(rows):
        st.markdown(f"#### Predictions ({len(rows)} studies) — {markup.text(job.output)}")
        st.caption(
            "Studies shortened to their last characters; positive calls in red; the download has everything."
        )
        _, styled = readable(rows, job.folder)
        st.dataframe(styled, hide_index=True, width="stretch", height=320)
    aside = read_table(job.errors_output) if job.accepted else None
    if aside is not None and len(aside):
        st.markdown(f"#### Files set aside ({len(aside)})")
        shown = aside[["path", "kind", "reason"]].assign(
            path=aside["path"].map(lambda p: short(str(p), job.folder))
        )
        st.dataframe(shown, hide_index=True, width="stretch")
        st.download_button(
            "Download the set-aside list",
            job.errors_output.read_bytes(),
            job.errors_output.name,
            "text/csv",
            key="batch_aside_download",
        )
    if not job.running:
        if rows is not None:
            kind = output_format(job.output)
            mime = "text/csv" if kind == "csv" else "application/jsonl"
            st.download_button("Download the predictions", job.output.read_bytes(), job.output.name, mime)
        if state.get("batch_shown_running"):
            state.batch_shown_running = False
            st.rerun()
    else:
        state.batch_shown_running = True


def start(folder: str, output: str, model: Path, deidentify: bool) -> None:
    """Start a job on a folder inside the data folders, writing inside the app folder."""
    source = paths.readable_path(folder, "folder")
    target = paths.output_path(output, common.folder("batch"))
    keyed = Deidentifier.from_env() if deidentify else None
    state.batch_job = BatchJob(source, target, common.predictor(model), deidentify=keyed).start()


def current_job() -> BatchJob | None:
    """This session's job, else the running (or newest) one of this app: a reload reattaches."""
    return state.get("batch_job") or latest_batch(common.folder("batch"))


def main() -> None:
    st.title("Batch")
    st.write("Predict every study in a folder on this server (scanned recursively, DICOM by content).")
    st.caption(
        "Folders: inside "
        + ", ".join(markup.text(d) for d in paths.data_dirs())
        + ". The output goes into the app folder."
    )
    model = common.active_model()
    st.markdown(common.model_line(model))
    common.show_notice(model)
    ready = common.model_ready(model)
    if not ready:
        st.warning(common.no_model_message(model))
    job = current_job()
    running = job is not None and job.running
    folder = st.text_input("Folder", value=str(paths.data_dirs()[0]), disabled=running)
    default_out = common.folder("batch") / "predictions.csv"
    output = st.text_input(
        "Output file (.csv or .jsonl; an existing file is resumed)", value=str(default_out)
    )
    keyed = bool(os.environ.get(DEIDENTIFY_KEY_ENV))
    deidentify = st.checkbox(
        "De-identify the output",
        key="batch_deidentify",
        disabled=not keyed or running,
        help="Study ids and paths written as keyed pseudonyms, the same as `twoview predict --deidentify` "
        f"with the server's ${DEIDENTIFY_KEY_ENV}" + ("" if keyed else " (not set on this server)"),
    )
    if st.button("Start", type="primary", disabled=running or not ready):
        start(folder, output, model, deidentify)
        st.rerun()  # redraw the form with Start disabled
    if job is not None:
        st.fragment(show_job, run_every=1.0 if job.running else None)(job)


with common.user_errors():
    main()
