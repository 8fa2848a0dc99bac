"""Upload folders: safe names, zips that cannot escape, limits counted while unpacking, cleanup."""

from __future__ import annotations

import gc
import io
import os
import stat
import zipfile

import numpy as np
import pytest

from app import uploads as upload_module
from app.common import BoundedCache, Session
from app.uploads import UploadError, UploadFolder, safe_name
from tests.hardening.attacks import GiB, MiB, huge_dicom, understated_zip, zeros_zip


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("IM0001", "IM0001"),
        ("../../etc/passwd", "_.._etc_passwd"),
        ("C:\\Windows\\x.dcm", "C__Windows_x.dcm"),
        (".hidden", "hidden"),
        ("Röntgen thorax.dcm", "Rontgen thorax.dcm"),
        ("..", "file"),
    ],
)
def test_safe_name_keeps_one_plain_part(name, expected):
    assert safe_name(name) == expected


def zip_bytes(members: dict[str, bytes], link: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        if link:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return buffer.getvalue()


def test_zip_members_stay_inside_the_folder(tmp_path):
    uploads = UploadFolder(tmp_path)
    data = zip_bytes(
        {"a/b.dcm": b"1", "../../up.dcm": b"2", "/abs/c.dcm": b"3", "a/.hidden/d": b"4", "x/./y/../z": b"5"},
        link="a/link",
    )
    written = uploads.add("pack.zip", data)
    names = sorted(p.relative_to(uploads.root).as_posix() for p in written)
    assert names == ["pack/a/b.dcm", "pack/a/d", "pack/abs/c.dcm", "pack/up.dcm", "pack/x/y/z"]
    assert all(p.resolve().is_relative_to(uploads.root.resolve()) for p in written)
    assert not (uploads.root / "pack" / "a" / "link").exists()


def test_same_names_do_not_overwrite(tmp_path):
    uploads = UploadFolder(tmp_path)
    first, second = uploads.add("IM0001", b"a"), uploads.add("IM0001", b"b")
    assert [p.name for p in (*first, *second)] == ["IM0001", "IM0001-1"]
    assert second[0].read_bytes() == b"b"


def test_broken_and_oversized_zips_are_refused(tmp_path, monkeypatch):
    uploads = UploadFolder(tmp_path)
    with pytest.raises(UploadError, match="not a readable zip"):
        uploads.add("bad.zip", b"PK\x03\x04 not really")
    monkeypatch.setattr(upload_module, "MAX_UPLOAD_BYTES", 10)
    with pytest.raises(UploadError, match="unpacks to"):
        uploads.add("big.zip", zip_bytes({"a": b"x" * 11}))


def test_folder_is_removed_on_close_and_when_forgotten(tmp_path):
    uploads = UploadFolder(tmp_path)
    uploads.add("a.png", b"x")
    root = uploads.root
    uploads.close()
    assert not root.exists() and uploads.closed
    other = UploadFolder(tmp_path)
    root = other.root
    del other
    gc.collect()
    assert not root.exists()


def test_a_4_gib_zip_bomb_is_refused_while_unpacking_and_leaves_nothing(tmp_path):
    """4.2 MB of zip holding 4 GiB of zeros (8.9 GB of server memory before): refused, nothing written."""
    bomb = zeros_zip(tmp_path / "bomb.zip", [("study/zeros.dcm", b"", 4 * GiB)])
    assert bomb.stat().st_size < 5 * MiB
    uploads = UploadFolder(tmp_path)
    with (
        bomb.open("rb") as f,
        pytest.raises(UploadError, match="holds a file of 4.0 GiB; files are refused beyond 256 MiB"),
    ):
        uploads.add("bomb.zip", f)
    assert not any(uploads.root.iterdir()) and uploads.written == 0


def test_sizes_are_counted_while_unpacking_not_taken_from_the_zip(tmp_path, monkeypatch):
    """The limits hold on the bytes actually written: a zip that understates a size fails its CRC unpacked."""
    uploads = UploadFolder(tmp_path)
    with pytest.raises(UploadError, match="Bad CRC-32"):
        uploads.add("liar.zip", understated_zip(tmp_path / "liar.zip").read_bytes())
    assert not any(uploads.root.iterdir())
    monkeypatch.setattr(upload_module, "MAX_FILE_BYTES", 3 * MiB)
    monkeypatch.setattr(upload_module, "MAX_UPLOAD_BYTES", 7 * MiB)
    uploads.add("a.dcm", bytes(2 * MiB))
    uploads.add("b.dcm", io.BytesIO(bytes(2 * MiB)))
    with pytest.raises(UploadError, match="c.dcm: more than 3 MiB"):
        uploads.add("c.dcm", bytes(4 * MiB))
    uploads.add("d.dcm", bytes(2 * MiB))
    with pytest.raises(UploadError, match="e.dcm: the upload unpacks to more than 7 MiB in all"):
        uploads.add("e.dcm", bytes(2 * MiB))
    assert sorted(p.name for p in uploads.root.iterdir()) == [
        "a.dcm",
        "b.dcm",
        "d.dcm",
    ]  # refused ones removed
    assert uploads.written == 6 * MiB


def test_four_16384_pixel_dicoms_in_a_3_mb_zip_are_refused_before_unpacking(tmp_path):
    """2.1 GB on disk and 2.4 GB of server memory before; the zip's own directory already says too much."""
    header, zeros = huge_dicom(16384)
    archive = zeros_zip(tmp_path / "four.zip", [(f"IM{i}", header, zeros) for i in range(4)])
    assert archive.stat().st_size < 4 * MiB
    uploads = UploadFolder(tmp_path)
    with pytest.raises(UploadError, match="holds a file of 512 MiB"):
        uploads.add("four.zip", archive.read_bytes())
    assert not any(uploads.root.iterdir())


def test_a_session_removes_its_folder_and_ends_its_reader_when_it_ends(tmp_path):
    session = Session()
    uploads = UploadFolder(session.root)
    uploads.add("a.png", b"x")
    pid = session.reader.run(os_getpid, "x")
    session.close()
    assert not session.root.exists() and session.closed
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_the_image_cache_is_bounded_in_bytes():
    cache = BoundedCache(limit=10 * MiB)
    for i in range(20):
        cache.get(i, lambda: np.zeros(MiB, dtype=np.uint8))
    assert cache.nbytes <= 10 * MiB and len(cache) == 10
    assert 19 in dict(cache.items()) and 0 not in dict(cache.items())
    huge = cache.get(
        "big", lambda: np.zeros(20 * MiB, dtype=np.uint8)
    )  # one item above the limit is kept alone
    assert huge.nbytes == 20 * MiB and len(cache) == 1


def os_getpid(path: str) -> int:
    return os.getpid()
