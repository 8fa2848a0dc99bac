"""Keyed pseudonyms for outputs and logs (`twoview predict --deidentify`).

Study ids and every part of a file path become HMAC-SHA256 prefixes under a secret key read from the
environment; in DICOM outputs UIDs become `2.25.<integer of an HMAC>` and Patient IDs `p<hex>`. The
same key gives the same pseudonyms, so de-identified runs resume and shards merge; without the key
they can be neither reversed nor checked against a guessed UID.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path, PurePath

from pipeline.errors import TwoviewError
from pipeline.records import StudyPrediction
from pipeline.studies import SetAside, Study

__all__ = ["DEIDENTIFY_KEY_ENV", "DeidentifyError", "Deidentifier", "scrubbed_logs"]


class DeidentifyError(TwoviewError):
    """De-identification cannot run: no key, or one too short to be a secret."""


#: The environment variable holding the secret key of `twoview predict --deidentify`.
DEIDENTIFY_KEY_ENV = "TWOVIEW_DEIDENTIFY_KEY"
_MIN_KEY_BYTES = 16
_DIGEST_CHARS = 16  # 64 bits of HMAC-SHA256: no collision in any real archive
_PLAIN_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,5}")


class Deidentifier:
    """Keyed pseudonyms for outputs: study ids and every path part become HMAC-SHA256 prefixes.

    The same key gives the same pseudonyms, so de-identified runs resume and merge; without the key
    they cannot be reversed or checked against a guessed UID. Paths are made relative to `root`.
    """

    def __init__(self, key: str | bytes, root: str | Path | None = None) -> None:
        key = key.encode("utf-8") if isinstance(key, str) else key
        if len(key) < _MIN_KEY_BYTES:
            raise DeidentifyError(
                f"the de-identification key must be at least {_MIN_KEY_BYTES} characters; "
                f"set ${DEIDENTIFY_KEY_ENV} to a long random secret (e.g. `openssl rand -hex 32`)"
            )
        self._key = key
        self.root = Path(root) if root is not None else None
        self._roots = () if self.root is None else tuple(dict.fromkeys((self.root, self.root.resolve())))
        self._known: dict[str, str] = {}  # raw text -> pseudonym, for scrubbing free text
        self._pattern: re.Pattern[str] | None = None

    @classmethod
    def from_env(cls, root: str | Path | None = None) -> Deidentifier:
        """The key from `$TWOVIEW_DEIDENTIFY_KEY`; missing is an error naming the variable."""
        key = os.environ.get(DEIDENTIFY_KEY_ENV, "")
        if not key:
            raise DeidentifyError(
                f"--deidentify needs a secret key in ${DEIDENTIFY_KEY_ENV} (at least {_MIN_KEY_BYTES} "
                "characters); runs with the same key write the same pseudonyms"
            )
        return cls(key, root)

    def under(self, root: str | Path) -> Deidentifier:
        """The same key with paths made relative to `root` (the scanned folder)."""
        other = Deidentifier(self._key, root)
        other._known = self._known
        return other

    def _digest(self, kind: str, text: str, chars: int = _DIGEST_CHARS) -> str:
        message = f"{kind}\0{text}".encode("utf-8", "surrogateescape")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:chars]

    def _remember(self, raw: str, pseudonym: str) -> None:
        if len(raw) >= 6 and self._known.get(raw) != pseudonym:  # short ids would match unrelated text
            self._known[raw] = pseudonym
            self._pattern = None

    def study_id(self, study_id: str) -> str:
        """The pseudonym of a study id: "s" and 16 hex digits."""
        pseudonym = f"s{self._digest('study', study_id)}"
        self._remember(study_id, pseudonym)
        return pseudonym

    def uid(self, uid: str) -> str:
        """The pseudonym of a DICOM UID: `2.25.` and the integer of 128 bits of the HMAC (a valid UID)."""
        pseudonym = f"2.25.{int(self._digest('uid', uid, 32), 16)}"
        if uid not in self._known:  # a study UID keeps its study-id pseudonym in free text
            self._remember(uid, pseudonym)
        return pseudonym

    def patient_id(self, patient_id: str) -> str:
        """The pseudonym of a Patient ID: "p" and 16 hex digits ("" stays "")."""
        if not patient_id:
            return ""
        pseudonym = f"p{self._digest('patient', patient_id)}"
        self._remember(patient_id, pseudonym)
        return pseudonym

    def path(self, path: str | PurePath) -> str:
        """The path under `root` with every part replaced by its pseudonym (a short suffix like .dcm kept)."""
        path = PurePath(path)
        parts = path.parts
        if self.root is not None:
            for root in self._roots:
                if path.is_relative_to(root):
                    parts = path.relative_to(root).parts
                    break
        parts = tuple(p for p in parts if p not in ("/", ""))
        if not parts:
            return "."
        names = [f"d{self._digest('part', p)}" for p in parts[:-1]]
        suffix = PurePath(parts[-1]).suffix
        suffix = suffix if _PLAIN_SUFFIX.fullmatch(suffix) else ""
        names.append(f"f{self._digest('part', parts[-1])}{suffix}")
        pseudonym = "/".join(names)
        self._remember(str(path), pseudonym)
        if self.root is not None and path.is_relative_to(self.root):
            self._remember(path.relative_to(self.root).as_posix(), pseudonym)
        return pseudonym

    def names_a_file(self, value: object) -> bool:
        """True for a path under `root` (not root itself) or one met before: a file to write as a pseudonym."""
        if not isinstance(value, PurePath):
            return False
        return str(value) in self._known or any(value != r and value.is_relative_to(r) for r in self._roots)

    def learn(self, studies: Iterable[Study], set_aside: Iterable[SetAside]) -> None:
        """Remember every id and path of a run, so `text` can replace them in free-text reasons."""
        for study in studies:
            self.study_id(study.study_id)
            for source in study.sources:
                self.path(source.path)
        for item in set_aside:
            self.path(item.path)
            if item.study_id:
                self.study_id(item.study_id)

    def text(self, text: str) -> str:
        """Free text (a reason, a log line) with every known id and path, and any path under root, replaced."""
        if self._known:
            if self._pattern is None:
                keys = sorted(self._known, key=len, reverse=True)
                self._pattern = re.compile("|".join(map(re.escape, keys)))
            text = self._pattern.sub(lambda m: self._known[m.group(0)], text)
        if self.root is not None:
            under = re.escape(str(self.root).rstrip("/")) + r"/[^\s:;,()'\"]*"
            text = re.sub(under, lambda m: self.path(m.group(0)), text)
        return text

    def prediction(self, prediction: StudyPrediction) -> StudyPrediction:
        """A prediction whose study id and files are pseudonyms."""
        files = {
            name: None if value is None else Path(self.path(value))
            for name, value in (
                ("frontal_file", prediction.frontal_file),
                ("lateral_file", prediction.lateral_file),
            )
        }
        return replace(
            prediction,
            study_id=self.study_id(prediction.study_id),
            errors=tuple(map(self.set_aside, prediction.errors)),
            **files,
        )

    def set_aside(self, item: SetAside) -> SetAside:
        """A set-aside file with its path, study id and reason de-identified."""
        return replace(
            item,
            path=Path(self.path(item.path)),
            study_id=self.study_id(item.study_id) if item.study_id else item.study_id,
            reason=self.text(item.reason),
        )

    def log_filter(self) -> logging.Filter:
        """A filter that rewrites log records: paths and known ids in the message, its arguments and traceback."""
        return _ScrubFilter(self)


class _ScrubFilter(logging.Filter):
    """Rewrites each record in place (every handler after it sees the scrubbed text)."""

    def __init__(self, deidentifier: Deidentifier) -> None:
        super().__init__()
        self.deidentifier = deidentifier

    def filter(self, record: logging.LogRecord) -> bool:
        deid = self.deidentifier
        if getattr(record, "_twoview_scrubbed", False):
            return True
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if isinstance(record.args, tuple):
            record.args = tuple(deid.path(a) if deid.names_a_file(a) else a for a in record.args)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        record.msg, record.args = deid.text(message), ()
        if record.exc_text:
            record.exc_text = deid.text(record.exc_text)
        record._twoview_scrubbed = True
        return True


@contextmanager
def scrubbed_logs(deidentify: Deidentifier | None) -> Iterator[None]:
    """With a `Deidentifier`: every handler of the root logger rewrites paths and ids while the block runs."""
    if deidentify is None:
        yield
        return
    scrub = deidentify.log_filter()
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(scrub)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(scrub)
