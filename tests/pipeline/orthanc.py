"""A real Orthanc PACS for tests: DICOMweb plugin on, HTTP basic auth, 127.0.0.1 only, storage in a test folder."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "twoview", "orthanc-test-password"


def skip_without_orthanc() -> None:
    """Skip the calling test where Orthanc or its DICOMweb plugin is not installed."""
    if shutil.which("Orthanc") is None or not PLUGIN.is_file():
        pytest.skip(
            "Orthanc with its DICOMweb plugin is not installed (Debian: apt-get install orthanc orthanc-dicomweb, "
            "which scripts/install.sh does as root)"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """One Orthanc process on a free 127.0.0.1 port, storing into `folder`; restartable on the same storage."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.config = folder / "orthanc.json"
        self.process: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            json.dumps(
                {
                    "Name": "twoview-test",
                    "HttpPort": self.port,
                    "RemoteAccessAllowed": False,
                    "DicomServerEnabled": False,
                    "StorageDirectory": str(folder / "storage"),
                    "IndexDirectory": str(folder / "index"),
                    "Plugins": [str(PLUGIN)],
                    "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
                    "AuthenticationEnabled": True,
                    "RegisteredUsers": {USER: PASSWORD},
                    "HttpCompressionEnabled": False,
                },
                indent=2,
            )
        )

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.root}/dicom-web"

    def start(self, timeout: float = 60) -> Orthanc:
        log = (self.folder / "orthanc.log").open("ab")
        self.process = subprocess.Popen(
            ["Orthanc", str(self.config)], stdout=log, stderr=log, cwd=self.folder
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start; see {self.folder / 'orthanc.log'}")
            try:
                if self.get("/system").ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"Orthanc did not answer within {timeout} s; see {self.folder / 'orthanc.log'}")

    def stop(self, kill: bool = False) -> None:
        """Stop it (SIGKILL with `kill`, as a crash or a pulled cable would) and wait for it to exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self.process = None

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.root + path, auth=(USER, PASSWORD), timeout=30, **kwargs)

    def upload(self, files: list[Path]) -> None:
        for path in files:
            answer = requests.post(
                f"{self.root}/instances", data=path.read_bytes(), auth=(USER, PASSWORD), timeout=30
            )
            answer.raise_for_status()

    def series(self, study_uid: str, modality: str) -> list[dict]:
        """The study's series of one modality, each with its instances' SOP Instance UIDs (`"sops"`)."""
        found = self.get(f"/dicom-web/studies/{study_uid}/series", params={"Modality": modality})
        if found.status_code == 204 or not found.content:
            return []
        out = []
        for item in found.json():
            uid = item["0020000E"]["Value"][0]
            instances = self.get(f"/dicom-web/studies/{study_uid}/series/{uid}/instances").json()
            out.append({"uid": uid, "sops": [i["00080018"]["Value"][0] for i in instances]})
        return out

    def instance(self, study_uid: str, series_uid: str, sop_uid: str) -> bytes:
        """One instance as a DICOM file (WADO-RS would wrap it in a multipart message)."""
        ids = requests.post(
            f"{self.root}/tools/lookup", data=sop_uid, auth=(USER, PASSWORD), timeout=30
        ).json()
        return self.get(f"/instances/{ids[0]['ID']}/file").content
