"""Which view is an image: frontal (PA/AP) or lateral? Tags first, then words, then the pixels.

Evidence, strongest first: ViewPosition, the View Code Sequence, Patient Orientation, the series
and protocol descriptions, the file name, and last the image itself, read by a small learned view
classifier (`pipeline.view_classifier`) that abstains below its calibrated threshold. A user's
choice overrides all of it (`studies.assemble_studies`).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from enum import Enum
from typing import NamedTuple

import numpy as np

from models.errors import ModelError
from pipeline.dicom import XrayImage

__all__ = [
    "View",
    "ViewDecision",
    "detect_view",
    "view_from_tags",
    "view_from_text",
    "view_from_pixels",
]

logger = logging.getLogger(__name__)


class View(str, Enum):
    """The two views twoview's branches are trained on."""

    FRONTAL = "frontal"  # PA or AP; which one is kept in the reason and in XrayImage.view_position
    LATERAL = "lateral"


class ViewDecision(NamedTuple):
    """A view (None = unknown), a short human reason, and a confidence in [0, 1]."""

    view: View | None
    reason: str
    confidence: float

    @property
    def needs_confirmation(self) -> bool:
        """True when a person should confirm the view before it routes a prediction (see CONFIRM_BELOW)."""
        return self.view is None or self.confidence < CONFIRM_BELOW


# Views decided with less confidence than this (file names, pixels near the classifier's threshold)
# are shown to the user to confirm before the app predicts with them.
CONFIRM_BELOW = 0.8

# Confidence per kind of evidence: coded tags are near-certain, free text less; pixels give the
# view classifier's calibrated probability.
_CONF_VIEW_POSITION = 0.98
_CONF_DECUBITUS = 0.6  # LLD/RLD: decubitus films are horizontal-beam projections; see VIEW_POSITIONS
_CONF_VIEW_CODE = 0.95
_CONF_ORIENTATION = 0.85
_CONF_DESCRIPTION = 0.8
_CONF_FILENAME = 0.7

VIEW_POSITIONS: dict[str, View] = {
    "PA": View.FRONTAL,
    "AP": View.FRONTAL,
    "FRONTAL": View.FRONTAL,
    "PA ERECT": View.FRONTAL,
    "AP ERECT": View.FRONTAL,
    "AP SUPINE": View.FRONTAL,
    "LL": View.LATERAL,
    "RL": View.LATERAL,
    "LAT": View.LATERAL,
    "LATERAL": View.LATERAL,
    "LEFT LATERAL": View.LATERAL,
    "RIGHT LATERAL": View.LATERAL,
    "LLD": View.LATERAL,  # left/right lateral decubitus: lateral, at lower confidence (_CONF_DECUBITUS)
    "RLD": View.LATERAL,
}
_OBLIQUE_POSITIONS = {"RAO", "LAO", "RPO", "LPO", "RLO", "LLO", "OBL", "OBLIQUE"}

# Word patterns on accent-free lower-case text; boundaries are "not a letter or digit", so "_" and
# "-" separate words ("view1_frontal") while "pa" never matches inside "paediatric".
_B, _E = r"(?<![a-z0-9])", r"(?![a-z0-9])"
_LATERAL_WORDS = (
    r"lat(?:eral|erale|eraux|\.)?",
    r"lateralis",
    r"seitlich",
    r"seitl\.?",
    r"profil",
    r"profile",
    r"perfil",
    r"ll",
    r"rl",
)
_FRONTAL_WORDS = (
    r"p\.?a\.?",
    r"a\.?p\.?",
    r"postero\s?anterior",
    r"antero\s?posterior",
    r"posteroanterieur",
    r"antero\s?posteriore?",
    r"dorsoventral",
    r"ventrodorsal",
    r"frontal",
    r"frontale",
    r"frente",
    r"face",
    r"de face",
    r"thorax pa",
)
_LATERAL_RE = re.compile(_B + "(?:" + "|".join(_LATERAL_WORDS) + ")" + _E)
_FRONTAL_RE = re.compile(_B + "(?:" + "|".join(_FRONTAL_WORDS) + ")" + _E)
_OBLIQUE_RE = re.compile(_B + r"(?:obl(?:ique|iqua|iquo|\.)?|schraeg|schrag|rao|lao|rpo|lpo)" + _E)


def detect_view(image: XrayImage, *, use_pixels: bool = True) -> ViewDecision:
    """Decide frontal vs lateral from the strongest evidence available; view None when unsure."""
    for decide in (view_from_tags, _from_descriptions, _from_filename):
        decision = decide(image)
        if decision is not None:
            return decision
    if use_pixels and image.pixels.size:
        return view_from_pixels(image.pixels)
    return ViewDecision(None, "no view tags, descriptions or pixels to decide from", 0.0)


def view_from_tags(image: XrayImage) -> ViewDecision | None:
    """ViewPosition, then the View Code Sequence meaning, then Patient Orientation; None if silent."""
    for decide in (_from_view_position, _from_view_code, _from_orientation):
        decision = decide(image)
        if decision is not None:
            return decision
    return None


def _from_view_position(image: XrayImage) -> ViewDecision | None:
    """The ViewPosition tag (0018,5101)."""
    value = " ".join(image.view_position.upper().replace("_", " ").split())
    if not value:
        return None
    if value in VIEW_POSITIONS:
        view = VIEW_POSITIONS[value]
        confidence = _CONF_DECUBITUS if value in ("LLD", "RLD") else _CONF_VIEW_POSITION
        return ViewDecision(view, f"ViewPosition tag is '{value}'", confidence)
    if value in _OBLIQUE_POSITIONS:
        return ViewDecision(None, f"ViewPosition tag is '{value}', an oblique view", 0.0)
    return None


def _from_view_code(image: XrayImage) -> ViewDecision | None:
    """The View Code Sequence's code meaning, e.g. 'postero-anterior' or 'left lateral'."""
    decision = view_from_text(image.view_code_meaning, "View Code Sequence", _CONF_VIEW_CODE)
    return decision if decision is not None and decision.view is not None else None


def _from_orientation(image: XrayImage) -> ViewDecision | None:
    """Patient Orientation: one image axis runs head-foot; the other L/R (frontal) or A/P (lateral)."""
    parts = image.patient_orientation.upper().replace("/", "\\").split("\\")
    if len(parts) != 2 or not all(parts):
        return None
    axes = {_axis(part) for part in parts}
    shown = "\\".join(parts)
    if axes == {"LR", "HF"}:
        reason = f"Patient Orientation is '{shown}': the image runs left-right, as a frontal view does"
        return ViewDecision(View.FRONTAL, reason, _CONF_ORIENTATION)
    if axes == {"AP", "HF"}:
        reason = f"Patient Orientation is '{shown}': the image runs front-back, as a lateral view does"
        return ViewDecision(View.LATERAL, reason, _CONF_ORIENTATION)
    return None


def _axis(direction: str) -> str:
    """The body axis an orientation string mainly runs along, from its first letter."""
    return {"L": "LR", "R": "LR", "A": "AP", "P": "AP", "H": "HF", "F": "HF"}.get(direction[:1], "?")


def _from_descriptions(image: XrayImage) -> ViewDecision | None:
    """Series description, then protocol name: the first that names exactly one view."""
    for label, text in (
        ("series description", image.series_description),
        ("protocol name", image.protocol_name),
    ):
        decision = view_from_text(text, label, _CONF_DESCRIPTION)
        if decision is not None and decision.view is not None:
            return decision
    return None


def _from_filename(image: XrayImage) -> ViewDecision | None:
    """The file name, e.g. CheXpert's 'view1_frontal.jpg' or 'patient7_lat.png'."""
    decision = view_from_text(image.path.stem, "file name", _CONF_FILENAME)
    return decision if decision is not None and decision.view is not None else None


def view_from_text(text: str, label: str, confidence: float = _CONF_DESCRIPTION) -> ViewDecision | None:
    """Keywords in English, Spanish, German, French or Italian; None if the text names no view.

    Text naming both views ("PA + LAT") or an oblique gives view None, so weaker evidence decides.
    """
    words = _normalise(text)
    if not words:
        return None
    lateral = _LATERAL_RE.search(words)
    frontal = _FRONTAL_RE.search(words)
    if _OBLIQUE_RE.search(words) or (lateral and frontal):
        return ViewDecision(None, f"{label} '{text.strip()}' is ambiguous", 0.0)
    if lateral:
        return ViewDecision(View.LATERAL, f"{label} '{text.strip()}' says '{lateral.group()}'", confidence)
    if frontal:
        return ViewDecision(View.FRONTAL, f"{label} '{text.strip()}' says '{frontal.group()}'", confidence)
    return None


def _normalise(text: str) -> str:
    """Lower-case, accents removed, separators (_ - / + , ;) turned into spaces."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    return " ".join(re.sub(r"[_\-/\\+,;:()\[\]|]", " ", folded).split())


def view_from_pixels(pixels: np.ndarray) -> ViewDecision:
    """Ask the bundled view classifier; below its calibrated threshold the view stays unknown, with why."""
    from pipeline import view_classifier  # torch loads only when the pixels have to decide

    try:
        scores = view_classifier.classify(pixels)
    except ModelError as err:
        logger.error("the view classifier cannot run: %s", err)
        return ViewDecision(
            None, f"no view tags, and the view classifier cannot run ({err}): confirm the view", 0.0
        )
    probs = scores.probabilities
    if not scores.chest_film:
        reason = (
            f"no view tags, and the view classifier does not see a chest film (frontal {probs['frontal']:.2f}, "
            f"lateral {probs['lateral']:.2f}, other {probs['other']:.2f}): confirm the view"
        )
        return ViewDecision(None, reason, 0.0)
    name, confidence = scores.view
    if confidence < scores.threshold:
        reason = f"no view tags; the view classifier is unsure ({name} {confidence:.2f}): confirm the view"
        return ViewDecision(None, reason, confidence)
    return ViewDecision(
        View(name), f"no view tags; the view classifier says {name} ({confidence:.2f})", confidence
    )
