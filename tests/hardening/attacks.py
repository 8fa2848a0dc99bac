"""Attack files from the second hardening round, made cheaply: sparse files, and zips written by hand.

A zip of gigabytes of zeros is assembled from one compressed block repeated (each block ends with a
full flush, which resets the compressor, so every 16 MiB of zeros compresses to the same bytes),
so a 4 GiB bomb takes seconds to make instead of half a minute to compress.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pipeline.dicom import read_image

__all__ = [
    "GiB",
    "MiB",
    "SAMPLE_FRONTAL",
    "checkpoint_bytes",
    "dicom_header",
    "header_then_zeros",
    "huge_dicom",
    "image_then_zeros",
    "markup_dicom",
    "pickle_bytes",
    "png_bomb",
    "understated_zip",
    "zeros_zip",
]

MiB, GiB = 2**20, 2**30
REPO = Path(__file__).resolve().parents[2]
SAMPLE_FRONTAL = REPO / "sample_data" / "studies" / "TV000000000" / "ST00000" / "SE001" / "1.dcm"
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
_CHUNK = 16 * MiB


def dicom_header(rows: int = 1024, cols: int = 1024, bits: int = 16, **tags: str) -> bytes:
    """The bytes of a CR header (file meta and data set, no Pixel Data) declaring rows x cols pixels."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CR_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = tags.pop("StudyInstanceUID", generate_uid())
    ds.Modality = tags.pop("Modality", "CR")
    ds.ViewPosition = "PA"
    ds.BodyPartExamined = "CHEST"
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def header_then_zeros(path: Path, zeros: int = 2 * 10**9) -> Path:
    """A DICOM header followed by `zeros` zero bytes (sparse on disk): pydicom walks them 8 bytes at a time."""
    path.write_bytes(dicom_header())
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size + zeros)
    return path


def image_then_zeros(path: Path, zeros: int) -> Path:
    """A readable radiograph followed by `zeros` zero bytes (sparse on disk)."""
    path.write_bytes(SAMPLE_FRONTAL.read_bytes())
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size + zeros)
    return path


def huge_dicom(side: int = 16384, bits: int = 16) -> tuple[bytes, int]:
    """A side x side DICOM as (header bytes ending in the Pixel Data element header, zero bytes after)."""
    length = side * side * bits // 8
    element = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length)
    return dicom_header(side, side, bits) + element, length


def markup_dicom(url: str, *, readable: bool = False) -> bytes:
    """A radiograph whose tags carry Markdown and HTML images of `url`.

    By default its Modality (so it is refused, and the refusal names the Modality); `readable` keeps
    Modality CR and puts them in its StudyInstanceUID and SeriesDescription instead (so it is predicted).
    """
    import pydicom

    ds = pydicom.dcmread(SAMPLE_FRONTAL)
    if readable:
        ds.StudyInstanceUID = f"1.2`![s]({url}/study.png)`"
        ds.SeriesDescription = f"<img src='{url}/html.png'>"
    else:
        ds.Modality = f"![m]({url}/modality.png)"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def png_bomb(side: int = 30000) -> bytes:
    """A PNG whose header declares side x side pixels, of one compressed row repeated (a few hundred KB)."""
    raw_row = b"\x00" + bytes(side)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(raw_row) for _ in range(side)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def zeros_zip(path: Path, members: list[tuple[str, bytes, int]]) -> Path:
    """A zip (deflate, zip64) whose members are `prefix` followed by `zeros` zero bytes, written by hand."""
    block = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zero_block = block.compress(bytes(_CHUNK)) + block.flush(zlib.Z_FULL_FLUSH)
    central = []
    with path.open("wb") as out:
        for name, prefix, zeros in members:
            crc = zlib.crc32(prefix)
            compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
            parts = [compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)]
            whole, rest = divmod(zeros, _CHUNK)
            zero_crc_chunk = bytes(_CHUNK)
            for _ in range(whole):
                crc = zlib.crc32(zero_crc_chunk, crc)
            crc = zlib.crc32(bytes(rest), crc)
            tail = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
            end = tail.compress(bytes(rest)) + tail.flush(zlib.Z_FINISH)
            size = len(parts[0]) + whole * len(zero_block) + len(end)
            offset = out.tell()
            encoded = name.encode()
            extra = struct.pack("<HHQQ", 1, 16, len(prefix) + zeros, size)
            out.write(
                struct.pack(
                    "<IHHHHHIIIHH",
                    0x04034B50,
                    45,
                    0,
                    8,
                    0,
                    0x21,
                    crc,
                    0xFFFFFFFF,
                    0xFFFFFFFF,
                    len(encoded),
                    len(extra),
                )
                + encoded
                + extra
            )
            out.write(parts[0])
            for _ in range(whole):
                out.write(zero_block)
            out.write(end)
            central.append((encoded, crc, size, len(prefix) + zeros, offset))
        start = out.tell()
        for encoded, crc, size, full, offset in central:
            extra = struct.pack("<HHQQQ", 1, 24, full, size, offset)
            out.write(
                struct.pack(
                    "<IHHHHHHIIIHHHHHII",
                    0x02014B50,
                    45 | (3 << 8),
                    45,
                    0,
                    8,
                    0,
                    0x21,
                    crc,
                    0xFFFFFFFF,
                    0xFFFFFFFF,
                    len(encoded),
                    len(extra),
                    0,
                    0,
                    0,
                    0o100644 << 16,
                    0xFFFFFFFF,
                )  # fmt: skip
                + encoded
                + extra
            )
        end_of_central = out.tell()
        count, length = len(central), end_of_central - start
        out.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, length, start))
        out.write(struct.pack("<IIQI", 0x07064B50, 0, end_of_central, 1))
        out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, length, start, 0))
    return path


def understated_zip(path: Path, size: int = 64 * MiB, claimed: int = 1000) -> Path:
    """A zip whose one member holds `size` zero bytes but whose headers claim `claimed`."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("study/IM0001", bytes(size))
    data = bytearray(path.read_bytes())
    true = struct.pack("<I", size)
    for signature, at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        where = data.index(signature)
        assert data[where + at : where + at + 4] == true
        data[where + at : where + at + 4] = struct.pack("<I", claimed)
    path.write_bytes(bytes(data))
    return path


def checkpoint_bytes(
    config: dict, tensors: dict[str, tuple[str, list[int], int]] | None = None, data: bytes = b""
) -> bytes:
    """A .safetensors file by hand: a twoview header with `config`, tensor entries (dtype, shape, bytes), `data`."""
    header: dict = {
        "__metadata__": {"format": "twoview", "format_version": "1", "config": json.dumps(config)}
    }
    offset = 0
    for name, (dtype, shape, length) in (tensors or {}).items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + length]}
        offset += length
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def pickle_bytes() -> bytes:
    """A PyTorch pickle (which could run code when loaded), to be renamed `.safetensors`."""
    import torch

    buffer = io.BytesIO()
    torch.save({"weights": torch.zeros(2)}, buffer)
    return buffer.getvalue()


def frontal_png() -> bytes:
    """The sample frontal view as an 8-bit PNG."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray((read_image(SAMPLE_FRONTAL).pixels * 255).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()
