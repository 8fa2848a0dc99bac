"""Predict: upload a study (or pick a bundled one), check the views, see every head's probabilities and heatmaps."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from app import common, markup
from app.uploads import LOOSE_STUDY, MAX_UPLOAD_PIXELS, UploadError, UploadFolder
from models.names import HEADS
from pipeline.isolate import read_pixels
from pipeline.outputs import prediction_bytes
from pipeline.overlay import overlay
from pipeline.records import StudyPrediction
from pipeline.studies import ImageSource, ScanResult, SetAside, Study, assemble_studies, collect_sources
from pipeline.views import View

VIEW_CHOICES = ["frontal", "lateral", "exclude"]
ROUTE_TEXT = {
    "joint": "joint: both views, the fused head decides",
    "frontal": "frontal only: the frontal head decides",
    "lateral": "lateral only: the lateral head decides",
}
HEAD_COLUMNS = [*HEADS, "final"]  # final last, so it stands out
COLOURS = ["#6baed6", "#74c476", "#fd8d3c", "#49006a"]  # the final bar stands out
state = st.session_state


def take_uploads(files: list) -> None:
    """Store a new set of uploaded files in a fresh folder (the previous one is removed) and read them.

    Files are streamed to disk within the upload limits (`app.uploads`) and read in the session's
    killable reader, at most `MAX_UPLOAD_PIXELS` of images in all.
    """
    key = tuple(f.file_id for f in files)
    current = state.get("upload_folder")
    if state.get("upload_key") == key and (current is None or not current.closed):
        return
    state.upload_key = key
    old = state.pop("upload_folder", None)
    if old is not None:
        old.close()
    if not files:
        forget_files()
        return
    uploads = UploadFolder(common.session().root)
    state.upload_folder = uploads
    problems = []
    for file in files:
        try:
            uploads.add(file.name, file)
        except UploadError as err:
            problems.append(SetAside(Path(file.name), str(err).removeprefix(f"{file.name}: ")))
    read_folder(uploads.root, f"upload:{abs(hash(key)) % 10**8}", problems, max_pixels=MAX_UPLOAD_PIXELS)


def read_folder(
    root: Path, origin: str, problems: list[SetAside] | None = None, *, max_pixels: int | None = None
) -> None:
    """Read every file under `root`: views detected, unreadable files kept with their reasons."""
    sources, aside = collect_sources(
        root,
        verify_pixels=True,
        root_study=LOOSE_STUDY,
        runner=common.session().reader,
        max_pixels=max_pixels,
    )
    state.sources = sources
    state.read_aside = [*(problems or []), *aside]
    state.root = root
    state.origin = origin
    state.pop("predictions", None)


def forget_files() -> None:
    for key in ("sources", "read_aside", "root", "origin", "predictions", "pixels", "heatmaps"):
        state.pop(key, None)


def choose_input() -> None:
    mode = st.radio("Studies from", ["Upload files", "A bundled sample study"], horizontal=True, key="mode")
    if mode == "Upload files":
        files = st.file_uploader(
            "DICOM, PNG or JPEG files, or a zip of them (many at once)",
            accept_multiple_files=True,
            key="uploads",
        )
        take_uploads(files or [])
        return
    state.pop("upload_key", None)
    names = sorted(p.name for p in common.SAMPLE_STUDIES.iterdir() if p.is_dir())
    name = st.selectbox("Sample study", names, key="sample")
    if name and state.get("origin") != f"sample:{name}":
        read_folder(common.SAMPLE_STUDIES / name, f"sample:{name}")


def name_of(path: Path) -> str:
    root = state.get("root")
    return path.relative_to(root).as_posix() if root and path.is_relative_to(root) else path.name


def short(text: str) -> str:
    """A reason with the session's folder left out of the paths it names."""
    root = state.get("root")
    return text.replace(f"{root}/", "") if root else text


def problem(path: Path, reason: str) -> str:
    """One file's problem as Markdown: its name in bold, both escaped (they come from the upload)."""
    return f"**{markup.text(name_of(path))}**: {markup.text(short(reason))}"


def show_unreadable() -> None:
    for item in state.get("read_aside", []):
        st.error(problem(item.path, item.reason))


def edit_views(sources: list[ImageSource]) -> dict[Path, View | None]:
    """The files table; the view column can be changed. Returns the user's overrides."""
    detected = [s.view.value if s.view else "exclude" for s in sources]
    table = pd.DataFrame(
        {
            "file": [name_of(s.path) for s in sources],
            "view": detected,
            "detected": [s.view.value if s.view else "unknown" for s in sources],
            "why": [s.view_reason for s in sources],
            "study": [s.study_id for s in sources],
        }
    )
    edited = st.data_editor(
        table,
        key=f"views-{state.get('origin')}",
        hide_index=True,
        width="stretch",
        disabled=["file", "detected", "why", "study"],
        column_config={
            "view": st.column_config.SelectboxColumn("view ✎", options=VIEW_CHOICES, required=True),
            "why": st.column_config.TextColumn("why (detected)", width="large"),
            "study": st.column_config.TextColumn("study", width="small"),
        },
    )
    return {
        s.path: (None if chosen == "exclude" else View(chosen))
        for s, before, chosen in zip(sources, detected, edited["view"], strict=True)
        if chosen != before
    }


def show_set_aside(scan: ScanResult) -> None:
    unread = {a.path for a in state.get("read_aside", [])}
    aside = [a for a in scan.set_aside if a.path not in unread]
    if aside:
        with st.expander(f"{len(aside)} file(s) set aside", expanded=True):
            st.dataframe(
                pd.DataFrame(
                    {"file": [name_of(a.path) for a in aside], "reason": [short(a.reason) for a in aside]}
                ),
                hide_index=True,
                width="stretch",
            )


def signature(studies: tuple[Study, ...], model: Path) -> tuple:
    return (
        str(model),
        *((s.study_id, s.frontal and s.frontal.path, s.lateral and s.lateral.path) for s in studies),
    )


def predict(studies: tuple[Study, ...], model: Path) -> None:
    predictor = common.predictor(model)
    with st.spinner("Predicting…"):
        items = predictor.predict_studies(studies, batch_size=8, workers=0, runner=common.session().reader)
    state.predictions = {"key": signature(studies, model), "items": items}


def display_pixels(path: Path) -> np.ndarray:
    """The decoded image (float [0, 1], at most `DISPLAY_SIDE`) of a file, decoded in the session's reader.

    Kept for this session in a cache bounded in bytes.
    """
    cache = state.setdefault("pixels", common.BoundedCache())
    return cache.get(path, lambda: common.session().reader(read_pixels, path, common.DISPLAY_SIDE))


def heatmap(model: Path, study: Study, view: View, label: str) -> np.ndarray:
    """The Grad-CAM map of one view for one label, kept for this session (bounded in bytes)."""
    cache = state.setdefault("heatmaps", common.BoundedCache())
    key = (str(model), *(s and s.path for s in (study.frontal, study.lateral)), view, label)

    def make() -> np.ndarray:
        images = {
            v: display_pixels(s.path) if s else None
            for v, s in ((View.FRONTAL, study.frontal), (View.LATERAL, study.lateral))
        }
        return common.explainer(model).heatmap(view, label, images[View.FRONTAL], images[View.LATERAL])

    return cache.get(key, make)


def show_images(model: Path, study: Study, heat_label: str | None) -> None:
    columns = st.columns(2)
    for column, view, source in zip(columns, View, (study.frontal, study.lateral), strict=True):
        with column:
            if source is None:
                st.info(f"No {view.value} view in this study.")
                continue
            pixels = display_pixels(source.path)
            caption = f"{view.value}: {markup.text(name_of(source.path))}"
            if heat_label:
                heat = heatmap(model, study, view, heat_label)
                picture = overlay(pixels, heat)
                caption += f" — Grad-CAM for {markup.text(heat_label)}"
                if not heat.any():
                    caption += " (no region raises it on this view)"
            else:
                picture = common.to_display(pixels)
            st.image(common.fit(picture), caption=caption, width="stretch")


def probability_table(item: StudyPrediction, thresholds: dict[str, float]) -> pd.DataFrame:
    rows = []
    for label in item.final:
        row = {"label": label, **{h: item.head(h)[label] for h in HEAD_COLUMNS}}
        row["threshold"] = thresholds.get(label, 0.5)
        row["call"] = "positive" if (row["final"] or 0) >= row["threshold"] else "negative"
        rows.append(row)
    return pd.DataFrame(rows)


def highlight(table: pd.DataFrame):
    def colour(row: pd.Series) -> list[str]:
        hit = row["final"] is not None and row["final"] >= row["threshold"]
        style = "background-color: #f8d7da; font-weight: bold" if hit else "background-color: #d1e7dd"
        return [style if c == "final" else "" for c in row.index]

    return table.style.apply(colour, axis=1).format(precision=3, na_rep="—")


def probability_chart(table: pd.DataFrame) -> alt.LayerChart:
    order = list(table["label"])
    long = table.melt(id_vars=["label", "threshold"], value_vars=HEAD_COLUMNS, var_name="head").dropna()
    bars = (
        alt.Chart(long)
        .mark_bar()
        .encode(
            x=alt.X("label:N", title=None, sort=order, axis=alt.Axis(labelAngle=0)),
            xOffset=alt.XOffset("head:N", sort=HEAD_COLUMNS),
            y=alt.Y("value:Q", title="probability", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("head:N", sort=HEAD_COLUMNS, scale=alt.Scale(domain=HEAD_COLUMNS, range=COLOURS)),
            tooltip=["label", "head", alt.Tooltip("value:Q", format=".3f")],
        )
    )
    ticks = (
        alt.Chart(table)
        .mark_tick(color="black", thickness=2, size=40)
        .encode(
            x=alt.X("label:N", sort=order),
            y="threshold:Q",
            tooltip=[alt.Tooltip("threshold:Q", title="threshold")],
        )
    )
    return (bars + ticks).properties(height=260)


def show_study(
    model: Path, study: Study, item: StudyPrediction, thresholds: dict, heat_label: str | None
) -> None:
    st.markdown(f"#### Study {markup.text(study.study_id)}")
    if not item.ok:
        for error in item.errors:
            st.error(problem(error.path, error.reason))
        return
    st.markdown(f"**Route:** {ROUTE_TEXT[item.route]}")
    show_images(model, study, heat_label)
    table = probability_table(item, thresholds)
    shown = table.assign(label=table["label"].map(markup.text))  # st.table renders Markdown in its cells
    st.table(highlight(shown), hide_index=True)
    st.altair_chart(probability_chart(table), width="stretch")
    for error in item.errors:
        st.warning(problem(error.path, error.reason))


def show_results(model: Path, studies: tuple[Study, ...]) -> None:
    results = state.get("predictions")
    if not results or results["key"] != signature(studies, model):
        return
    config = common.model_config(model)
    thresholds = dict(config.thresholds)
    left, right = st.columns([1, 2])
    show_heat = left.toggle("Grad-CAM heatmap", key="show_heat")
    label = right.selectbox("Heatmap for", config.labels, key="heat_label", disabled=not show_heat)
    files = prediction_bytes(results["items"], config.labels, thresholds)
    one, two, _ = st.columns([1, 1, 3])
    one.download_button("Download CSV", files["csv"], "predictions.csv", "text/csv")
    two.download_button("Download JSON Lines", files["jsonl"], "predictions.jsonl", "application/jsonl")
    by_id = {s.study_id: s for s in studies}
    for item in results["items"]:
        show_study(model, by_id[item.study_id], item, thresholds, label if show_heat else None)


def main() -> None:
    st.title("Predict")
    model = common.active_model()
    ready = common.model_ready(model)
    if not ready:
        st.warning(common.no_model_message(model))
    choose_input()
    show_unreadable()
    sources = state.get("sources")
    if not sources:
        return
    st.markdown("#### Files and views")
    overrides = edit_views(sources)
    scan = assemble_studies(sources, overrides, set_aside=())
    show_set_aside(scan)
    if not scan.studies:
        st.info("No study has a usable frontal or lateral view; change a view above.")
        return
    st.caption(
        f"{len(scan.studies)} stud{'y' if len(scan.studies) == 1 else 'ies'}; model: {markup.text(model.name)}"
    )
    if st.button("Predict", type="primary", disabled=not ready):
        predict(scan.studies, model)
    if ready:
        show_results(model, scan.studies)


with common.user_errors():
    main()
