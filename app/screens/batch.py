"""Batch: predict every study in a folder on this server into a CSV or JSON Lines file, with live progress."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from app import common, markup, paths
from app.jobs import BatchJob
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
        ), f"Cancelled: {rows} studies written (run it again to resume)"
    return 1.0, "Stopped by an error"


def show_job(job: BatchJob) -> None:
    """Progress, the rows so far and the files set aside; reruns itself every second while running.

    Only an output the job accepted as its own is shown or offered for download.
    """
    rows = read_table(job.output) if job.accepted else None
    fraction, text = progress(job, 0 if rows is None else len(rows))
    st.progress(fraction, text=text)
    if job.running and st.button("Cancel", key="batch_cancel"):
        job.cancel()
    if job.error:
        st.error(markup.text(job.error))
    if rows is not None:
        st.markdown(f"#### Predictions ({len(rows)} studies) — {markup.text(job.output)}")
        st.dataframe(rows, hide_index=True, width="stretch", height=320)
    aside = read_table(job.errors_output) if job.accepted else None
    if aside is not None and len(aside):
        st.markdown(f"#### Files set aside ({len(aside)})")
        st.dataframe(aside[["path", "kind", "reason"]], hide_index=True, width="stretch")
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


def start(folder: str, output: str, model: Path) -> None:
    """Start a job on a folder inside the data folders, writing inside the app folder."""
    source = paths.readable_path(folder, "folder")
    target = paths.output_path(output, common.folder("batch"))
    state.batch_job = BatchJob(source, target, common.predictor(model)).start()


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
    job: BatchJob | None = state.get("batch_job")
    running = job is not None and job.running
    folder = st.text_input("Folder", value=str(paths.data_dirs()[0]), disabled=running)
    default_out = common.folder("batch") / "predictions.csv"
    output = st.text_input(
        "Output file (.csv or .jsonl; an existing file is resumed)", value=str(default_out)
    )
    if st.button("Start", type="primary", disabled=running or not ready):
        start(folder, output, model)
        job = state.batch_job
    if job is not None:
        st.fragment(show_job, run_every=1.0 if job.running else None)(job)


with common.user_errors():
    main()
