"""One PACS over DICOMweb (dicomweb-client): find studies (QIDO-RS), fetch their images (WADO-RS), store results (STOW-RS).

Credentials come from the environment only, never from the command line where `ps` shows them:
`$TWOVIEW_DICOMWEB_TOKEN` (a bearer token) or `$TWOVIEW_DICOMWEB_USER` + `$TWOVIEW_DICOMWEB_PASSWORD`
(HTTP basic). Every failure is a `DicomwebError` naming the server and what was being done.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset

from models.atomic import atomic_path
from pipeline.errors import TwoviewError

__all__ = [
    "IMAGE_MODALITIES",
    "PASSWORD_ENV",
    "TOKEN_ENV",
    "USER_ENV",
    "DicomwebError",
    "Pacs",
    "parse_date",
]

logger = logging.getLogger(__name__)

USER_ENV = "TWOVIEW_DICOMWEB_USER"
PASSWORD_ENV = "TWOVIEW_DICOMWEB_PASSWORD"
TOKEN_ENV = "TWOVIEW_DICOMWEB_TOKEN"
#: The modalities of radiographs: studies and series of other modalities are not fetched.
IMAGE_MODALITIES: tuple[str, ...] = ("CR", "DX")
#: WADO-RS in the transfer syntax the PACS holds (twoview decodes them): no transcoding, which can fail.
_AS_STORED = (("application/dicom", "*"),)
_PAGE = 500  # studies per QIDO-RS request
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class DicomwebError(TwoviewError):
    """The PACS cannot be reached, refused a request or answered with something unusable."""


def parse_date(text: str) -> date:
    """A date as YYYY-MM-DD or YYYYMMDD."""
    digits = text.replace("-", "")
    try:
        if len(digits) != 8 or not digits.isdigit():
            raise ValueError(text)
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError as err:
        raise DicomwebError(f"--since {text!r}: not a date; write it as YYYY-MM-DD") from err


class Pacs:
    """A DICOMweb server at `url` (its DICOMweb root, e.g. http://pacs:8042/dicom-web)."""

    def __init__(
        self, url: str, *, session: requests.Session | None = None, timeout: float = 60, attempts: int = 5
    ) -> None:
        """`attempts` per request, backing off 2, 4, 8, 16 s between them: a PACS gone for ~30 s stops the run."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DicomwebError(
                f"{url!r} is not a DICOMweb URL; give one like https://pacs.example.org/dicom-web"
            )
        if parts.username or parts.password:
            raise DicomwebError(
                "the DICOMweb URL holds credentials, which other users can read on the command line; "
                f"remove them and set ${USER_ENV} and ${PASSWORD_ENV} (or ${TOKEN_ENV}) instead"
            )
        self.url = urlunsplit(parts).rstrip("/")
        if attempts < 1:
            raise DicomwebError(f"attempts per DICOMweb request must be at least 1, got {attempts}")
        self.client = DICOMwebClient(self.url, session=session or requests.Session(), timeout=timeout)
        self.client.set_http_retry_params(retry=attempts > 1, max_attempts=attempts)

    @classmethod
    def from_env(cls, url: str, **kwargs) -> Pacs:
        """Authentication from the environment: a bearer token, else user and password, else none."""
        session = requests.Session()
        token = os.environ.get(TOKEN_ENV, "")
        user, password = os.environ.get(USER_ENV, ""), os.environ.get(PASSWORD_ENV, "")
        if token:
            session.headers["Authorization"] = f"Bearer {token}"
        elif user or password:
            if not (user and password):
                raise DicomwebError(f"set both ${USER_ENV} and ${PASSWORD_ENV} for HTTP basic authentication")
            session.auth = (user, password)
        return cls(url, session=session, **kwargs)

    def find_studies(
        self, since: date | None = None, modalities: Sequence[str] = IMAGE_MODALITIES
    ) -> list[str]:
        """The Study Instance UIDs of the studies with a radiograph (acquired on or after `since`), oldest first."""
        found: dict[str, str] = {}
        for modality in modalities:  # one query each: not every server matches a list of modalities
            filters = {"ModalitiesInStudy": modality}
            if since is not None:
                filters["StudyDate"] = f"{since:%Y%m%d}-"
            for item in self._search(filters, f"searching for {modality} studies (QIDO-RS)"):
                uid = _value(item, "0020000D")
                if uid:
                    found[uid] = _value(item, "00080020")
        return sorted(found, key=lambda uid: (found[uid], uid))

    def _search(self, filters: dict[str, str], what: str) -> Iterator[dict]:
        """Every QIDO-RS study match, a page at a time (an explicit limit: some servers ignore a bare offset)."""
        seen: set[str] = set()
        offset = 0
        while True:
            with self._request(what):
                page = self.client.search_for_studies(search_filters=filters, limit=_PAGE, offset=offset)
            uids = {_value(item, "0020000D") for item in page}
            if uids <= seen:  # an empty page, or a server repeating itself
                return
            seen |= uids
            yield from page
            if len(page) < _PAGE:
                return
            offset += len(page)

    def fetch_study(self, study_uid: str, folder: Path, modalities: Sequence[str] = IMAGE_MODALITIES) -> int:
        """Save the study's radiograph instances as `folder/<series>/<instance>.dcm`; returns how many."""
        if not _UID.match(study_uid):
            raise DicomwebError(f"{study_uid!r} is not a Study Instance UID")
        with self._request(f"listing the series of study {study_uid} (QIDO-RS)"):
            series = self.client.search_for_series(study_uid)
        wanted = [_value(s, "0020000E") for s in series if _value(s, "00080060") in modalities]
        count = 0
        for series_uid in filter(_UID.match, wanted):
            with self._request(f"fetching series {series_uid} of study {study_uid} (WADO-RS)"):
                for ds in self.client.iter_series(study_uid, series_uid, media_types=_AS_STORED):
                    count += self._save(ds, folder / series_uid)
        return count

    def store(self, paths: Sequence[Path]) -> None:
        """Send DICOM files in one STOW-RS request; any instance the server refuses is an error."""
        if not paths:
            return
        datasets = [pydicom.dcmread(p) for p in paths]
        with self._request(f"storing {len(datasets)} result objects (STOW-RS)"):
            answer = self.client.store_instances(datasets)
        failed = answer.get("FailedSOPSequence") or []
        if failed:
            reasons = ", ".join(
                f"{item.get('ReferencedSOPInstanceUID', '?')} (reason {item.get('FailureReason', '?')})"
                for item in failed
            )
            raise DicomwebError(f"PACS {self.url} refused {len(failed)} of the stored objects: {reasons}")

    def _save(self, ds: Dataset, folder: Path) -> int:
        sop = str(ds.get("SOPInstanceUID", ""))
        if not _UID.match(sop):
            logger.warning("PACS %s sent an instance without a usable SOP Instance UID; skipped", self.url)
            return 0
        try:
            with atomic_path(folder / f"{sop}.dcm") as tmp:
                ds.save_as(tmp, enforce_file_format=True)
        except OSError as err:
            raise TwoviewError(f"{folder}: cannot save a fetched instance ({err.strerror or err})") from err
        return 1

    @contextmanager
    def _request(self, what: str) -> Iterator[None]:
        """Turn the HTTP client's failures into one line naming the server and what failed."""
        try:
            yield
        except requests.HTTPError as err:
            status = err.response.status_code if err.response is not None else "?"
            hint = ""
            if status in (401, 403):
                hint = f"; check ${USER_ENV} and ${PASSWORD_ENV}, or ${TOKEN_ENV}"
            raise DicomwebError(f"PACS {self.url} answered HTTP {status} while {what}{hint}") from err
        except (requests.ConnectionError, requests.Timeout) as err:
            raise DicomwebError(f"PACS {self.url} cannot be reached while {what} ({_reason(err)})") from err
        except (requests.RequestException, ValueError) as err:
            raise DicomwebError(f"PACS {self.url} failed while {what} ({_reason(err)})") from err


def _value(item: dict, tag: str) -> str:
    """The first value of a DICOM JSON attribute, or ""."""
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _reason(err: BaseException) -> str:
    text = str(err)
    for known in ("Connection refused", "Connection reset", "timed out", "Name or service not known"):
        if known.lower() in text.lower():
            return known.lower()
    text = " ".join(text.split())
    return text if len(text) <= 160 else text[:157] + "..."
