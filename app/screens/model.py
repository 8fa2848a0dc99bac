"""Model: the active model's card (with its model card's known limits and held-out AUROCs), and a picker
among bundled, trained and uploaded checkpoints that changes this browser session's model only."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pandas as pd
import streamlit as st

from app import common, markup
from app.uploads import safe_name
from models.checkpoint import check, describe
from models.errors import ModelError
from pipeline.modelcard import card_sections

state = st.session_state


def candidates() -> dict[str, Path]:
    """Every checkpoint the app knows, by a readable name."""
    found: dict[str, Path] = {}
    seen: set[Path] = set()

    def add(name: str, path: Path) -> None:
        if path.resolve() not in seen:  # the default is often a bundled file: list it once
            seen.add(path.resolve())
            found[name] = path

    default = common.default_model()
    if default.is_file():
        add(f"default: {default.name}", default)
    for path in sorted(common.BUNDLED_MODELS.glob("*.safetensors")):
        add(f"bundled: {path.name}", path)
    for path in sorted(common.folder("runs").glob("*/best.safetensors"), reverse=True):
        add(f"trained: {path.parent.name}", path)
    for path in sorted(common.folder("models").glob("*.safetensors")):
        add(f"uploaded: {path.name}", path)
    return found


def card(path: Path) -> None:
    """Labels with thresholds, architecture, training data, metrics and provenance of one checkpoint."""
    info = describe(path)
    config = info["config"]
    provenance = config.get("provenance") or {}
    summary = common.model_summary(path)
    st.markdown(
        f"{markup.text(path)} — {path.stat().st_size / 2**20:.1f} MB, saved {time.ctime(path.stat().st_mtime)}"
    )
    st.markdown(f"**Trained on:** {markup.text(summary.trained_on)}")
    thresholds = config.get("thresholds") or {}
    aurocs = provenance.get("val_auroc") or {}
    st.dataframe(
        pd.DataFrame(
            {
                "label": config["labels"],
                "threshold": [thresholds.get(label, 0.5) for label in config["labels"]],
                "threshold from": [
                    "validation" if label in thresholds else "default 0.5" for label in config["labels"]
                ],
                "validation AUROC": [aurocs.get(label) for label in config["labels"]],
            }
        ),
        hide_index=True,
        width="stretch",
    )
    if summary.card:
        limits = card_sections(summary.card, "known limits")
        scores = card_sections(summary.card, "AUROC")
        with st.container(border=True):
            st.markdown("**From the model card**")
            for part in (limits, scores):
                if part:
                    st.markdown(demote(markup.document(part)))
            with st.expander("The whole model card"):
                st.markdown(demote(markup.document(summary.card)))
    left, right = st.columns(2)
    with left:
        st.markdown("**Network**")
        st.markdown(
            facts(
                {
                    "image size": f"{config['image_size']} px",
                    "dense blocks": " / ".join(map(str, config["block_config"])),
                    "growth rate": config["growth_rate"],
                    "stem width": config["init_features"],
                    "fusion": f"{config['fusion']} + {config['fusion_layers']} dense layers",
                    "normalisation": f"(x − {config['norm_mean']}) / {config['norm_std']}",
                }
            )
        )
    with right:
        st.markdown("**Training and provenance**")
        shown = {k: v for k, v in provenance.items() if k != "val_auroc"}
        extra = {k: v for k, v in info.items() if k not in ("config", "format", "format_version")}
        if shown or extra:
            st.markdown(facts({**shown, **extra}))
        else:
            st.caption("No training record in this checkpoint (e.g. untrained or made by hand).")


def demote(markdown: str) -> str:
    """Card headings three levels down, so they sit under the page's own."""
    return re.sub(r"^(#{1,3}) ", r"###\1 ", markdown, flags=re.MULTILINE)


def facts(items: dict) -> str:
    """A markdown list of `name: value` lines (floats to 3 decimals); names and values are escaped."""
    return "\n".join(
        f"- {markup.text(str(k).replace('_', ' '))}: {markup.text(f'{v:.3f}' if isinstance(v, float) else v)}"
        for k, v in items.items()
    )


def picker(active: Path) -> None:
    found = candidates()
    if not found:
        st.info("No checkpoints yet: upload one below, or train one on the Fine-tune page.")
        return
    names = list(found)
    current = next((i for i, n in enumerate(names) if found[n] == active), 0)
    name = st.selectbox("Checkpoint", names, index=current)
    st.caption(
        "The model you choose is used by this browser session only (Predict, Batch, Fine-tune's "
        "'the active model'); other users of this server keep theirs."
    )
    one, two = st.columns(2)
    if one.button("Use this model", type="primary", disabled=found[name] == active):
        check(found[name])  # a model that would fail at Predict is never made active
        common.set_active_model(found[name])
        st.rerun()
    if two.button("Back to the default model"):
        common.set_active_model(None)
        st.rerun()


def upload() -> None:
    """Keep an uploaded checkpoint only if `check` finds nothing a prediction would fail on."""
    if "model_upload_message" in state:
        st.success(state.pop("model_upload_message"))
    file = st.file_uploader("A twoview `.safetensors` checkpoint", key="model_upload")
    if file is None or state.get("model_upload_done") == file.file_id:
        return
    state.model_upload_done = file.file_id
    target = common.folder("models") / safe_name(file.name)
    if target.suffix != ".safetensors":
        target = target.with_name(target.name + ".safetensors")
    staging = target.with_name(f".{target.name}.uploading")
    with staging.open("wb") as out:
        shutil.copyfileobj(file, out, 1 << 20)
    try:
        check(staging)
    except ModelError as err:
        staging.unlink(missing_ok=True)
        st.error(markup.text(str(err).replace(str(staging), safe_name(file.name))))
        return
    staging.replace(target)
    state.model_upload_message = f"Saved as {markup.text(target)}; pick it above to use it."
    st.rerun()


def main() -> None:
    st.title("Model")
    active = common.active_model()
    common.show_notice(active)
    st.markdown("#### Active model")
    if common.model_ready(active):
        with common.user_errors():
            card(active)
    else:
        st.warning(common.no_model_message(active))
    st.markdown("#### Choose a model")
    picker(active)
    st.markdown("#### Upload a checkpoint")
    upload()


with common.user_errors():
    main()
