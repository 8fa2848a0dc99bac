"""Upload folders: safe names, zips that cannot escape, cleanup."""

from __future__ import annotations

import gc
import io
import stat
import zipfile

import pytest

from app import uploads as upload_module
from app.uploads import UploadError, UploadFolder, safe_name


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
    monkeypatch.setattr(upload_module, "MAX_UNZIPPED_BYTES", 10)
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
