"""Bounded DICOM parsing: files built to make pydicom walk, read or unpack gigabytes are refused in seconds.

The files are sparse (a few KB on disk). Before these bounds, a header followed by 2 GB of zeros kept
a core busy for minutes (pydicom reads (0000,0000) elements 8 bytes at a time: 20 MB took 10 s).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian

import pipeline.dicom as dicom_module
from pipeline.dicom import MAX_HEADER_READS, read_header, read_image
from pipeline.errors import DimensionsError, NotAnImageError
from tests.hardening.attacks import SAMPLE_FRONTAL, GiB, MiB, header_then_zeros, image_then_zeros

pytestmark = pytest.mark.timeout(120)  # a regression walks for minutes: fail instead of hanging


@pytest.mark.parametrize("reader", [read_header, read_image])
def test_a_header_followed_by_2_gb_of_zeros_is_refused(tmp_path, reader):
    path = header_then_zeros(tmp_path / "zeros.dcm", 2 * 10**9)
    with pytest.raises(NotAnImageError, match=f"more than {MAX_HEADER_READS:,} elements"):
        reader(path)


def test_the_cli_gives_a_result_on_it(tmp_path):
    """`twoview predict` on the same file used to give no result after 300 s; now it sets it aside."""
    folder = tmp_path / "in"
    folder.mkdir()
    header_then_zeros(folder / "zeros.dcm", 2 * 10**9)
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "predict", str(folder), "-o", str(tmp_path / "out.csv")],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "all 1 files were set aside" in done.stderr
    assert "elements" in (tmp_path / "out.errors.csv").read_text()


def test_an_image_followed_by_gigabytes_is_refused_before_its_pixels_are_read(tmp_path):
    path = image_then_zeros(tmp_path / "padded.dcm", 2 * GiB - 4 * MiB)
    for reader in (read_header, read_image):
        with pytest.raises(DimensionsError, match="need far less"):
            reader(path)


def test_a_little_trailing_padding_still_reads(tmp_path):
    """Parsing stops at the element after the pixel data: zeros there are not walked."""
    path = image_then_zeros(tmp_path / "padded.dcm", 512 * 1024)
    assert read_image(path).pixels.shape == read_image(SAMPLE_FRONTAL).pixels.shape


def deflated(path: Path, tail: bytes, *, in_sequence: bool = False) -> Path:
    """The sample frontal's header as a deflated data set, followed by `tail` (inside a sequence item if asked)."""
    ds = pydicom.dcmread(SAMPLE_FRONTAL, stop_before_pixels=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    if in_sequence:  # (0040,0275) SQ of undefined length, one item of undefined length, then the tail
        tail = (
            struct.pack("<HH2sHI", 0x0040, 0x0275, b"SQ", 0, 0xFFFFFFFF)
            + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
            + tail
        )
    meta = pydicom.dataset.FileMetaDataset(ds.file_meta)
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = DicomBytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = compressor.compress(body.getvalue()) + compressor.compress(tail) + compressor.flush()
    path.write_bytes(out.getvalue() + data)
    return path


@pytest.mark.parametrize("in_sequence", [False, True])
def test_zeros_inside_a_deflated_data_set_are_not_walked(tmp_path, in_sequence):
    """pydicom unpacks deflated data into its own buffer; twoview unpacks it and counts there too."""
    path = deflated(tmp_path / "deflated.dcm", bytes(16 * MiB), in_sequence=in_sequence)
    for reader in (read_header, read_image):
        with pytest.raises(NotAnImageError, match="elements"):
            reader(path)


def test_a_deflate_bomb_is_refused_while_unpacking(tmp_path, monkeypatch):
    monkeypatch.setattr(
        dicom_module, "MAX_INFLATED_BYTES", 8 * MiB
    )  # the real cap is 1 GiB: same path, less time
    path = deflated(tmp_path / "bomb.dcm", bytes(64 * MiB))
    assert path.stat().st_size < 200 * 1024
    with pytest.raises(DimensionsError, match="unpacks to more than"):
        read_header(path)


def test_a_named_pipe_is_not_opened_for_reading(tmp_path):
    """Opening a FIFO for reading blocks until a writer comes: the test would time out."""
    os.mkfifo(tmp_path / "pipe.dcm")
    for reader in (read_header, read_image):
        with pytest.raises(NotAnImageError, match="not a regular file"):
            reader(tmp_path / "pipe.dcm")
