"""What a model is, in words for its users: what it was trained on, its synthetic-only notice, its card.

The card is the Markdown file kept beside a checkpoint (`README.md` in its folder naming the file, as
`sample_data/models/README.md` does for the demo model); it is read, never copied into code, so a
retrained model's card is shown as it stands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from models.config import ModelConfig
from pipeline.predict import DEMO_MODEL

__all__ = ["CARD_NAME", "ModelSummary", "card_sections", "summarise"]

CARD_NAME = "README.md"
_HEADING = re.compile(r"^(#{2,3}) +(.+?) *$", re.MULTILINE)


@dataclass(frozen=True)
class ModelSummary:
    """One checkpoint described for a reader."""

    path: Path
    trained_on: str  # in words, never empty
    notice: str | None  # the synthetic-only sentence, while the model knows only phantoms
    card: str | None  # the model card's Markdown, if one sits beside the checkpoint

    @property
    def is_demo(self) -> bool:
        return _same(self.path, DEMO_MODEL)


def summarise(path: str | Path, config: ModelConfig) -> ModelSummary:
    """What `path` (whose config is `config`) was trained on, its notice and its card."""
    path = Path(path)
    notice = config.notice
    words = config.trained_on
    if not words:
        provenance = config.provenance or {}
        source = provenance.get("trained_on") or provenance.get("manifest")
        if provenance.get("train_studies"):
            words = f"{provenance['train_studies']} training studies"
            words += f" from {Path(str(source)).name}" if source else ""
        else:
            words = "not recorded in the checkpoint"
    if notice and "synthetic" not in words:
        words += " (synthetic phantoms only)"
    return ModelSummary(path, words, notice, _card(path))


def card_sections(card: str, *words: str) -> str:
    """The card's level-2 sections (with their subsections) whose heading holds any of `words`."""
    found = list(_HEADING.finditer(card))
    kept = []
    for i, match in enumerate(found):
        if len(match.group(1)) != 2 or not any(w.lower() in match.group(2).lower() for w in words):
            continue
        end = next((m.start() for m in found[i + 1 :] if len(m.group(1)) == 2), len(card))
        kept.append(card[match.start() : end].strip())
    return "\n\n".join(kept)


def _card(path: Path) -> str | None:
    card = path.parent / CARD_NAME
    try:
        text = card.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return text if path.name in text else None


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False
