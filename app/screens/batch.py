"""Batch: predict every study in a folder on this server into a CSV or JSON Lines file, with live progress."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from app import common
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
    except (ValueError, pd.errors.EmptyDataError):
        return None


def progress(job: BatchJob, rows: int) -> tuple[float, str]:
    if job.phase in ("starting", "scanning"):
        total = max(job.files_total, 1)
        return job.files_done / total, f"Reading files: {job.files_done} of {job.files_total or '?'}"
    if job.phase == "predicting":
        total = max(job.studies, 1)
        return min(rows / total, 1.0), f"Predicting: {rows} of {job.studies} studies"
    if job.phase == "done":
        return 1.0, f"Done: {job.summary}"
    return 1.0, "Stopped by an error"


def show_job(job: BatchJob) -> None:
    """Progress, the rows so far and the files set aside; reruns itself every second while running."""
    rows = read_table(job.output)
    fraction, text = progress(job, 0 if rows is None else len(rows))
    st.progress(fraction, text=text)
    if job.error:
        st.error(job.error)
    if rows is not None:
        st.markdown(f"#### Predictions ({len(rows)} studies) — {job.output}")
        st.dataframe(rows, hide_index=True, width="stretch", height=320)
    aside = read_table(job.errors_output)
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
    job = BatchJob(Path(folder).expanduser(), Path(output).expanduser(), common.predictor(model))
    state.batch_job = job.start()


def main() -> None:
    st.title("Batch")
    st.write("Predict every study in a folder on this server (scanned recursively, DICOM by content).")
    model = common.active_model()
    ready = common.model_ready(model)
    if not ready:
        st.warning(common.no_model_message(model))
    job: BatchJob | None = state.get("batch_job")
    running = job is not None and job.running
    folder = st.text_input("Folder", value=str(common.SAMPLE_STUDIES), disabled=running)
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
