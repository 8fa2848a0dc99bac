"""Predict (the landing page): a bundled sample study ready to predict, or uploads; every file's view shown
with a thumbnail and confirmed where unsure; results right under Predict, with a viewer per image."""

from __future__ import annotations

import os
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from app import common, markup, viewer
from app.uploads import LOOSE_STUDY, MAX_UPLOAD_PIXELS, UploadError, UploadFolder
from models.names import HEADS
from pipeline.deidentify import DEIDENTIFY_KEY_ENV, Deidentifier
from pipeline.dicom import ImageValues, read_values
from pipeline.display import presets, window
from pipeline.isolate import read_pixels
from pipeline.outputs import prediction_bytes
from pipeline.records import DISAGREE_AT, StudyPrediction
from pipeline.studies import ImageSource, ScanResult, SetAside, Study, assemble_studies, collect_sources
from pipeline.views import View, ViewDecision

SAMPLE_MODE, UPLOAD_MODE = "A bundled sample study", "Upload files"
VIEW_CHOICES = ["frontal", "lateral", "exclude"]
ROUTE_TEXT = {
    "joint": "joint: both views, the fused head decides",
    "frontal": "frontal only: the frontal head decides",
    "lateral": "lateral only: the lateral head decides",
}
HEAD_COLUMNS = [*HEADS, "final"]  # final last, so it stands out
COLOURS = ["#6baed6", "#74c476", "#fd8d3c", "#49006a"]  # the final bar stands out
THUMB_SIDE = 192
state = st.session_state


# --- input ------------------------------------------------------------------------------------


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
    for key in ("sources", "read_aside", "root", "origin", "predictions", "pixels", "heatmaps", "values"):
        state.pop(key, None)


def choose_input() -> None:
    """A bundled sample study (preselected, so one press of Predict shows a result) or uploads."""
    mode = st.radio("Studies from", [SAMPLE_MODE, UPLOAD_MODE], horizontal=True, key="mode")
    if mode == UPLOAD_MODE:
        files = st.file_uploader(
            "DICOM, PNG or JPEG files, or a zip of them (many at once)",
            accept_multiple_files=True,
            key="uploads",
        )
        take_uploads(files or [])
        return
    state.pop("upload_key", None)
    names = sorted(p.name for p in common.SAMPLE_STUDIES.iterdir() if p.is_dir())
    name = st.selectbox("Sample study (synthetic phantom)", names, key="sample")
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


# --- files and views --------------------------------------------------------------------------


def decision(source: ImageSource) -> ViewDecision:
    return ViewDecision(source.view, source.view_reason, source.view_confidence)


def view_key(source: ImageSource) -> str:
    return f"view|{state.get('origin')}|{name_of(source.path)}"


def chosen_views(sources: list[ImageSource]) -> tuple[dict[Path, View | None], list[ImageSource]]:
    """The user's views (path -> view, None = excluded) and the files still waiting for confirmation.

    A view that needs confirmation counts only once the user picked it (then it is "set by the user");
    a confident one counts as detected unless the user changed it.
    """
    overrides: dict[Path, View | None] = {}
    unconfirmed = []
    for source in sources:
        choice = state.get(view_key(source))
        needs = decision(source).needs_confirmation
        if choice is None:
            if needs:
                unconfirmed.append(source)
            continue
        if needs or choice != (source.view.value if source.view else None):
            overrides[source.path] = None if choice == "exclude" else View(choice)
    return overrides, unconfirmed


def statuses(scan: ScanResult, unconfirmed: list[ImageSource]) -> dict[Path, tuple[str, str]]:
    """Each file's part in the studies: (kind, words); kind is "used", "aside" or "wait"."""
    many = len(scan.studies) > 1
    out: dict[Path, tuple[str, str]] = {}
    for study in scan.studies:
        for view, source in ((View.FRONTAL, study.frontal), (View.LATERAL, study.lateral)):
            if source is not None:
                where = f" of study {study_title(study)}" if many else ""
                out[source.path] = ("used", f"used as the {view.value} view{where}")
    for item in scan.set_aside:
        words = "excluded by you" if item.kind == "excluded" else f"set aside: {short(item.reason)}"
        out[item.path] = ("aside", words)
    for source in unconfirmed:
        out[source.path] = ("wait", "waiting for you to confirm its view")
    return out


def thumbnail(path: Path) -> np.ndarray:
    cache = state.setdefault("pixels", common.BoundedCache())
    return cache.get(
        (path, "thumb"), lambda: common.to_display(common.session().reader(read_pixels, path, THUMB_SIDE))
    )


def files_table(sources: list[ImageSource], scan: ScanResult, unconfirmed: list[ImageSource]) -> None:
    """One row per file: thumbnail, name and part in the study, detected view with its confidence and
    whole reason, and the view control (empty until the user picks one where the view is unsure)."""
    status = statuses(scan, unconfirmed)
    marks = {"used": ":green", "aside": ":orange", "wait": ":red"}
    widths = [1.1, 2.2, 3.6, 2.6]
    for column, title in zip(
        st.columns(widths), ("Image", "File", "Detected view", "View used"), strict=True
    ):
        column.markdown(f"**{title}**")
    for source in sources:
        found = decision(source)
        with st.container(border=True):
            picture, name, detected, choose = st.columns(widths, vertical_alignment="center")
            picture.image(thumbnail(source.path), width=96)
            kind, words = status.get(source.path, ("aside", "not used"))
            name.markdown(f"**{markup.text(name_of(source.path))}**")
            name.markdown(f"{marks[kind]}[{markup.text(words)}]")
            view = found.view.value if found.view else "unknown"
            sure = "needs your confirmation" if found.needs_confirmation else "confident"
            detected.markdown(f"**{view}**, confidence {found.confidence:.0%} ({sure})")
            detected.caption(markup.text(short(found.reason)))
            label = "Confirm the view" if found.needs_confirmation else "View"
            index = None if found.needs_confirmation else VIEW_CHOICES.index(found.view.value)
            choose.radio(
                label,
                VIEW_CHOICES,
                index=index,
                key=view_key(source),
                horizontal=True,
                help="The view decides which branch of the model reads this image. "
                "'exclude' leaves the file out.",
            )


# --- prediction -------------------------------------------------------------------------------


def signature(studies: tuple[Study, ...], model: Path) -> tuple:
    return (
        str(model),
        *((s.study_id, s.frontal and s.frontal.path, s.lateral and s.lateral.path) for s in studies),
    )


def unconfirmed_in(studies: tuple[Study, ...]) -> list[ImageSource]:
    """The images that would route a prediction with a view nobody confirmed."""
    return [s for study in studies for s in study.sources if decision(s).needs_confirmation]


def predict(studies: tuple[Study, ...], model: Path) -> None:
    if unconfirmed_in(studies):  # the button is disabled then; this keeps it true whatever calls this
        st.error("Confirm every view above before Predict.")
        return
    predictor = common.predictor(model)
    with st.spinner("Predicting…"):
        items = predictor.predict_studies(studies, batch_size=8, workers=0, runner=common.session().reader)
    state.predictions = {"key": signature(studies, model), "items": items}


def display_pixels(path: Path) -> np.ndarray:
    """The decoded image (float [0, 1], at most `DISPLAY_SIDE`) of a file, decoded in the session's reader.

    Kept for this session in a cache bounded in bytes; Grad-CAM explains these pixels.
    """
    cache = state.setdefault("pixels", common.BoundedCache())
    return cache.get(path, lambda: common.session().reader(read_pixels, path, common.DISPLAY_SIDE))


def image_values(path: Path) -> ImageValues:
    """The file's own grey values (at most `DISPLAY_SIDE`), for window/level; cached like the pixels."""
    cache = state.setdefault("values", common.BoundedCache())
    return cache.get(path, lambda: common.session().reader(read_values, path, common.DISPLAY_SIDE))


def heatmap(model: Path, study: Study, view: View, label: str, head: str) -> np.ndarray:
    """The Grad-CAM map of one view for one label and head, kept for this session (bounded in bytes)."""
    cache = state.setdefault("heatmaps", common.BoundedCache())
    key = (str(model), *(s and s.path for s in (study.frontal, study.lateral)), view, label, head)

    def make() -> np.ndarray:
        images = {
            v: display_pixels(s.path) if s else None
            for v, s in ((View.FRONTAL, study.frontal), (View.LATERAL, study.lateral))
        }
        return common.explainer(model).heatmap(view, label, images[View.FRONTAL], images[View.LATERAL], head)

    return cache.get(key, make)


# --- results ----------------------------------------------------------------------------------


def study_title(study: Study) -> str:
    """A readable name: the sample's name, else the study's file names (the UID goes in a detail)."""
    origin = state.get("origin", "")
    if origin.startswith("sample:"):
        return f"sample {origin.removeprefix('sample:')}"
    return " + ".join(name_of(s.path) for s in study.sources)


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
        return [style if c in ("final", "call") else "" for c in row.index]

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
    return (bars + ticks).properties(height=240)


def default_label(item: StudyPrediction, thresholds: dict[str, float]) -> str:
    """The most probable positive finding; the most probable finding when none is positive."""
    final = {label: value for label, value in item.final.items() if value is not None}
    positive = [label for label, value in final.items() if value >= thresholds.get(label, 0.5)]
    return max(positive or final, key=final.__getitem__)


def heat_controls(study: Study, item: StudyPrediction, labels: list[str], thresholds: dict) -> dict | None:
    """The Grad-CAM controls of one study: on/off, label, head, opacity and colour scale (None when off)."""
    key = f"heat|{study.study_id}"
    on = st.toggle("Grad-CAM heatmap", key=f"{key}|on", help="Where the head looked for the chosen finding.")
    if not on:
        return None
    first = default_label(item, thresholds)

    def describe(label: str) -> str:
        value = item.final.get(label)
        call = "positive" if value is not None and value >= thresholds.get(label, 0.5) else "negative"
        return f"{label} ({value:.2f}, {call})" if value is not None else label

    one, two, three, four = st.columns([3, 3, 2, 2])
    label = one.selectbox(
        "Finding explained", labels, index=labels.index(first), key=f"{key}|label", format_func=describe
    )
    heads = {"joint": "joint head (both views)", "own": "each view's own head"}
    if item.route != "joint":
        heads = {"own": f"{item.route} head (the only view)"}
    head = two.selectbox("Head explained", list(heads), format_func=heads.__getitem__, key=f"{key}|head")
    opacity = three.slider("Opacity", 0.0, 1.0, 0.45, 0.05, key=f"{key}|opacity")
    colours = four.selectbox("Colour scale", viewer.COLOUR_SCALES, key=f"{key}|colours")
    return {"label": label, "head": head, "opacity": opacity, "colours": colours}


def window_controls(source: ImageSource, values: ImageValues) -> tuple[float, float, bool]:
    """Preset, centre, width, invert and reset for one image, in the image's own units."""
    key = f"wl|{source.path}"
    windows = presets(values)
    first = next(iter(windows))
    low, high = float(values.values.min()), float(values.values.max())
    span = max(high - low, 1.0)

    def reset(preset: str = first, invert: bool | None = None) -> None:
        state[f"{key}|preset"] = preset
        state[f"{key}|centre"] = float(np.clip(windows[preset].centre, low, high))
        state[f"{key}|width"] = float(np.clip(windows[preset].width, span / 256, 2 * span))
        if invert is not None:
            state[f"{key}|invert"] = invert

    if f"{key}|preset" not in state:
        reset(first, values.monochrome1)
    one, two, three = st.columns([4, 2, 2], vertical_alignment="bottom")
    one.selectbox(
        "Window preset",
        list(windows),
        key=f"{key}|preset",
        on_change=lambda: reset(state[f"{key}|preset"]),
        help=f"'file default' is {values.window_from}.",
    )
    two.toggle("Invert", key=f"{key}|invert")
    three.button("Reset", key=f"{key}|reset", on_click=reset, args=(first, values.monochrome1))
    left, right = st.columns(2)
    step = span / 1000
    centre = left.slider("Window centre (level)", low, high, key=f"{key}|centre", step=step)
    width = right.slider("Window width", span / 256, 2 * span, key=f"{key}|width", step=step)
    return centre, width, bool(state[f"{key}|invert"])


def show_image(model: Path, study: Study, item: StudyPrediction, view: View, heat: dict | None) -> None:
    source = study.frontal if view is View.FRONTAL else study.lateral
    if source is None:
        st.info(f"No {view.value} view in this study.")
        return
    values = image_values(source.path)
    st.markdown(f"**{view.value}**: {markup.text(name_of(source.path))}")
    centre, width, invert = window_controls(source, values)
    grey = window(common.fit(values.values), centre, width, invert=invert)
    layer = None
    if heat is not None:
        head = "joint" if heat["head"] == "joint" else view.value
        layer = common.fit(heatmap(model, study, view, heat["label"], head))
        value = item.head(head).get(heat["label"])
        text = f"Grad-CAM of the **{head} head** for **{markup.text(heat['label'])}**"
        text += f" (its probability {value:.2f})" if value is not None else ""
        if not layer.any():
            text += ": no region raises it on this view"
        st.caption(text)
    figure = viewer.figure(
        grey,
        layer,
        opacity=heat["opacity"] if heat else 0.45,
        colours=heat["colours"] if heat else "Jet",
        revision=str(source.path),
    )
    st.plotly_chart(figure, config=viewer.PLOT_CONFIG, key=f"viewer|{source.path}")
    st.caption(
        f"{values.values.shape[1]} x {values.values.shape[0]} px shown "
        f"(scroll to zoom, drag to pan, double-click to reset the zoom)"
    )


def show_study(model: Path, study: Study, item: StudyPrediction, config) -> None:
    thresholds = dict(config.thresholds)
    st.markdown(f"#### Study: {markup.text(study_title(study))}")
    if study.study_id != LOOSE_STUDY:
        st.caption(f"Study UID / id: {markup.text(study.study_id)}")
    if not item.ok:
        for error in item.errors:
            st.error(problem(error.path, error.reason))
        return
    st.markdown(f"**Route:** {ROUTE_TEXT[item.route]}")
    for label, (front, side) in item.disagreements().items():
        st.warning(
            f"**The heads disagree on {markup.text(label)}**: frontal {front:.2f} vs lateral {side:.2f} "
            f"(a difference of {DISAGREE_AT} or more). One view shows what the other does not, or one "
            "head is wrong: look at both images.",
            icon=":material/call_split:",
        )
    table = probability_table(item, thresholds)
    shown = table.assign(label=table["label"].map(markup.text))  # st.table renders Markdown in its cells
    left, right = st.columns([5, 4])
    left.table(highlight(shown), hide_index=True)
    right.altair_chart(probability_chart(table), width="stretch")
    for error in item.errors:
        st.warning(problem(error.path, error.reason))
    heat = heat_controls(study, item, list(config.labels), thresholds)
    for column, view in zip(st.columns(2), View, strict=True):
        with column:
            show_image(model, study, item, view, heat)


def downloads(items: list[StudyPrediction], studies: tuple[Study, ...], config) -> None:
    """CSV and JSON Lines of the results, de-identified on request with the server's key."""
    keyed = bool(os.environ.get(DEIDENTIFY_KEY_ENV))
    deid = st.checkbox(
        "De-identify the downloads",
        key="deidentify",
        disabled=not keyed,
        help="Study ids and file names become keyed pseudonyms, the same as `twoview predict --deidentify` "
        f"with the server's ${DEIDENTIFY_KEY_ENV}"
        + ("" if keyed else " (not set on this server, so this is off)"),
    )
    suffix = ""
    if deid:
        deidentify = Deidentifier.from_env(state.get("root"))
        deidentify.learn(studies, ())
        items = [deidentify.prediction(item) for item in items]
        suffix = "-deidentified"
    files = prediction_bytes(items, config.labels, dict(config.thresholds))
    state.downloads = files  # what the buttons serve, kept for this session's checks
    one, two, _ = st.columns([1, 1, 3])
    one.download_button("Download CSV", files["csv"], f"predictions{suffix}.csv", "text/csv")
    two.download_button(
        "Download JSON Lines", files["jsonl"], f"predictions{suffix}.jsonl", "application/jsonl"
    )


def show_results(model: Path, studies: tuple[Study, ...]) -> None:
    results = state.get("predictions")
    if not results or results["key"] != signature(studies, model):
        return
    config = common.model_config(model)
    by_id = {s.study_id: s for s in studies}
    for item in results["items"]:
        show_study(model, by_id[item.study_id], item, config)
    downloads(results["items"], studies, config)


def main() -> None:
    model = common.active_model()
    st.title(f"{common.APP_NAME}: chest X-ray findings from two views")
    st.markdown(common.APP_LINE)
    st.markdown(common.model_line(model))
    common.show_notice(model)
    ready = common.model_ready(model)
    if not ready:
        st.warning(common.no_model_message(model))
    choose_input()
    show_unreadable()
    sources = state.get("sources")
    if not sources:
        return
    st.markdown("#### Files and views")
    overrides, unconfirmed = chosen_views(sources)
    scan = assemble_studies(sources, overrides, set_aside=())
    files_table(sources, scan, unconfirmed)
    if unconfirmed:
        st.warning(
            f"Confirm the view of {len(unconfirmed)} file(s) above before Predict: "
            + ", ".join(markup.text(name_of(s.path)) for s in unconfirmed)
            + ". Their view was not clear enough from the file to trust; pick frontal, lateral or exclude.",
            icon=":material/visibility:",
        )
    elif not scan.studies:
        st.info("No study has a usable frontal or lateral view; change a view above.")
    can_predict = ready and not unconfirmed and bool(scan.studies)
    count = len(scan.studies)
    st.caption(f"{count} stud{'y' if count == 1 else 'ies'}; model: {markup.text(model.name)}")
    if st.button("Predict", type="primary", disabled=not can_predict):
        predict(scan.studies, model)
    if ready and not unconfirmed:
        show_results(model, scan.studies)


with common.user_errors():
    main()
