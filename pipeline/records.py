"""What a prediction is: one study's probabilities per head, the files it used and what went wrong.

A leaf module (no I/O), so the writers, the de-identification and the predictor can all share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from models.names import OUTPUTS
from pipeline.studies import SetAside

__all__ = ["DISAGREE_AT", "Probabilities", "StudyPrediction"]

Probabilities = dict[str, float | None]

#: The frontal and lateral heads disagree strongly on a label when their probabilities differ by this
#: much or more: one view shows what the other does not, or one head is wrong; a reader should look.
DISAGREE_AT = 0.5


@dataclass(frozen=True)
class StudyPrediction:
    """One study's probabilities per head (label -> value; None where the head did not run) and its files.

    `route` is "joint", "frontal" or "lateral", or None when no view could be read (`errors` says why).
    """

    study_id: str
    route: str | None
    final: Probabilities
    frontal: Probabilities
    lateral: Probabilities
    joint: Probabilities
    calls: dict[str, int]  # 0/1 for each label the model has a threshold for
    frontal_file: Path | None
    lateral_file: Path | None
    errors: tuple[SetAside, ...] = ()

    @property
    def ok(self) -> bool:
        return self.route is not None

    def head(self, name: str) -> Probabilities:
        """The probabilities of one head: "final", "frontal", "lateral" or "joint"."""
        if name not in OUTPUTS:
            raise KeyError(f"unknown head {name!r}; choose one of: {', '.join(OUTPUTS)}")
        return getattr(self, name)

    def disagreements(self, at: float = DISAGREE_AT) -> dict[str, tuple[float, float]]:
        """Labels on which the frontal and lateral heads differ by `at` or more: label -> (frontal, lateral)."""
        out = {}
        for label, front in self.frontal.items():
            side = self.lateral.get(label)
            if front is not None and side is not None and abs(front - side) >= at:
                out[label] = (front, side)
        return out
