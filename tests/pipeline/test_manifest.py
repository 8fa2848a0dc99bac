from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ManifestError
from pipeline.manifest import manifest_from_folder, read_label_table, read_manifest, write_manifest
from pipeline.studies import scan_folder
from pipeline.views import View
from tests.pipeline.conftest import write_png

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data" / "studies"

HEADER = "study_id,patient_id,frontal,lateral,effusion,nodule\n"


@pytest.fixture
def images(tmp_path: Path) -> Path:
    for name in ("a_f.png", "a_l.png", "b_f.png", "c_l.png"):
        write_png(tmp_path / "img" / name)
    return tmp_path


def write(folder: Path, text: str, name: str = "labels.csv") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_studies_views_labels_and_patients(images: Path) -> None:
    path = write(
        images,
        HEADER + "A,P1,img/a_f.png,img/a_l.png,1,0\nB,,img/b_f.png,,,-1\n\nC,P1,,img/c_l.png,1.0,0.0\n",
    )
    manifest = read_manifest(path)
    assert [s.study_id for s in manifest.studies] == ["A", "B", "C"]
    assert [s.route for s in manifest.studies] == ["joint", "frontal", "lateral"]
    a = manifest.studies[0]
    assert a.frontal.path == images / "img" / "a_f.png" and a.frontal.view is View.FRONTAL
    assert a.lateral.view is View.LATERAL and a.lateral.view_reason == "manifest column 'lateral'"
    assert manifest.label_names == ("effusion", "nodule")
    assert manifest.labels.dtype == np.float32
    np.testing.assert_array_equal(manifest.labels, [[1, 0], [np.nan, np.nan], [1, 0]])
    assert manifest.patient_ids == ("P1", "B", "P1")
    assert len(manifest) == 3


def test_images_dir_labels_subset_and_order(images: Path) -> None:
    elsewhere = images / "meta"
    elsewhere.mkdir()
    path = write(elsewhere, "frontal,lateral,study_id,x,y,z\na_f.png,,A,1,0,\n")
    manifest = read_manifest(path, images_dir=images / "img", labels=["z", "x"])
    assert manifest.label_names == ("z", "x")
    np.testing.assert_array_equal(manifest.labels, [[np.nan, 1]])
    assert manifest.patient_ids == ("A",)
    np.testing.assert_array_equal(manifest.labels_for(["x", "w"]), [[1, np.nan]])


def test_bom_and_absolute_paths(images: Path) -> None:
    absolute = images / "img" / "a_f.png"
    path = images / "labels.csv"
    path.write_text(f"study_id,frontal,lateral\nA,{absolute},\n", encoding="utf-8-sig")
    manifest = read_manifest(path)
    assert manifest.studies[0].frontal.path == absolute
    assert manifest.labels.shape == (1, 0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the manifest is empty"),
        ("study_id,frontal,effusion\nA,img/a_f.png,1\n", "line 1: missing required column 'lateral'"),
        ("study_id,frontal,lateral,x,x\n", "line 1: column 'x' appears twice"),
        ("study_id,frontal,lateral,,x\n", "line 1: column 4 has no name"),
        (
            HEADER + "A,,img/a_f.png,img/nope.png,1,0\n",
            "line 2, column 'lateral': file not found: img/nope.png",
        ),
        (HEADER + "A,,img/a_f.png,,yes,0\n", "line 2, column 'effusion': 'yes' is not a label value"),
        (HEADER + "A,,img/a_f.png,,1,2\n", "line 2, column 'nodule': '2' is not a label value"),
        (HEADER + "A,,img/a_f.png,,1,0.5\n", "line 2, column 'nodule': '0.5' is not a label value"),
        (
            HEADER + "A,,img/a_f.png,,1,0\n\nA,,img/b_f.png,,1,0\n",
            "line 4: study id 'A' is already used on line 2",
        ),
        (
            HEADER + "A,,img/a_f.png,,1,0\nB,P2, , ,1,0\n",
            "line 3: study 'B' has neither a frontal nor a lateral",
        ),
        (HEADER + ",P1,img/a_f.png,,1,0\n", "line 2, column 'study_id': the study id is blank"),
        (HEADER + "A,P1,img/a_f.png,,1\n", "line 2: 5 fields, but the header has 6"),
        (HEADER + 'A,P1,"img/a_f.png,,1,0\n', "not valid CSV"),
    ],
)
def test_bad_manifests_name_file_line_and_column(images: Path, text: str, message: str) -> None:
    path = write(images, text)
    with pytest.raises(ManifestError, match=re.escape(message)) as info:
        read_manifest(path)
    assert str(info.value).startswith(str(path))


def test_missing_label_column_and_missing_manifest(images: Path) -> None:
    path = write(images, "study_id,frontal,lateral,x\nA,img/a_f.png,,1\n")
    with pytest.raises(ManifestError, match="line 1: missing label column 'y'"):
        read_manifest(path, labels=["x", "y"])
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(images / "nope.csv")


def test_non_utf8_manifest(images: Path) -> None:
    path = images / "labels.csv"
    path.write_bytes(b"study_id,frontal,lateral\n\xff\xfe,,\n")
    with pytest.raises(ManifestError, match="not a UTF-8 text file"):
        read_manifest(path)


def test_write_then_read_round_trip(study_folder: Path, tmp_path: Path) -> None:
    scanned = scan_folder(study_folder)
    values = {"1.2.1": {"effusion": 1.0, "nodule": 0.0}, "1.2.2": {"effusion": float("nan"), "nodule": -1}}
    path = write_manifest(scanned, study_folder / "labels.csv", labels=["effusion", "nodule"], values=values)
    text = path.read_text()
    assert "p1/s1/pa" in text and str(study_folder) not in text  # relative paths
    manifest = read_manifest(path)
    assert [s.study_id for s in manifest.studies] == [s.study_id for s in scanned.studies]
    for read, original in zip(manifest.studies, scanned.studies, strict=True):
        assert read.route == original.route
        assert read.patient_id == original.patient_id
        for view in ("frontal", "lateral"):
            a, b = getattr(read, view), getattr(original, view)
            assert (a is None and b is None) or a.path.resolve() == b.path.resolve()
    np.testing.assert_array_equal(manifest.labels, [[1, 0], [np.nan, np.nan], [np.nan, np.nan]])

    outside = write_manifest(scanned.studies, tmp_path / "other" / "m.csv")
    assert str(study_folder.resolve()) in outside.read_text()  # absolute when not under the manifest
    assert [s.study_id for s in read_manifest(outside).studies] == ["1.2.1", "1.2.2", "1.2.3"]


def test_write_refuses_a_value_that_is_not_a_label(study_folder: Path) -> None:
    scanned = scan_folder(study_folder)
    with pytest.raises(ManifestError, match="label value 0.3 cannot be written"):
        write_manifest(scanned, study_folder / "m.csv", labels=["x"], values={"1.2.1": {"x": 0.3}})
    assert not (study_folder / "m.csv").exists()


def test_manifest_from_a_folder_and_a_labels_table(tmp_path):
    table = tmp_path / "labels.csv"
    source = (SAMPLE / "labels.csv").read_text().splitlines()
    table.write_text("\n".join(source[:5]) + "\n")
    out = manifest_from_folder(SAMPLE, table, tmp_path / "manifest.csv")
    manifest = read_manifest(out)
    assert manifest.label_names == (
        "pleural_effusion",
        "nodule",
        "cardiomegaly",
        "pneumothorax",
        "consolidation",
    )
    known = (~(manifest.labels != manifest.labels)).any(axis=1)  # rows with any known label
    assert known.sum() == 4 and len(manifest) >= 20


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id,a\n1,1\n", "study_id"),
        ("study_id,frontal\n1,x\n", "no label columns"),
        ("study_id,a\n1,maybe\n", "line 2"),
    ],
)
def test_bad_label_tables_say_what_to_fix(tmp_path, text, message):
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(ManifestError, match=message):
        manifest_from_folder(SAMPLE, tmp_path / "t.csv", tmp_path / "m.csv")


def test_label_tables_and_manifests_read_label_values_alike(tmp_path):
    (tmp_path / "t.csv").write_text("study_id,a,b,c\ns1,1.00,0.0,-1\ns2,,1,0\n")
    labels, values = read_label_table(tmp_path / "t.csv")
    assert labels == ["a", "b", "c"]
    assert values["s1"]["a"] == 1.0 and values["s1"]["b"] == 0.0 and np.isnan(values["s1"]["c"])
    assert np.isnan(values["s2"]["a"]) and values["s2"]["b"] == 1.0
