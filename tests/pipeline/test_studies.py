from __future__ import annotations

import multiprocessing
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

import numpy as np
import pytest

import pipeline.studies as studies_module
from pipeline.errors import TwoviewError
from pipeline.studies import (
    MAX_PICTURES_PER_FOLDER_STUDY,
    ImageSource,
    ScanResult,
    Study,
    assemble_studies,
    group_loose_pictures,
    is_chest,
    scan_folder,
)
from pipeline.views import View
from tests.pipeline.conftest import phantom_film, write_dicom, write_png


def by_id(result: ScanResult) -> dict[str, Study]:
    return {s.study_id: s for s in result.studies}


def aside_by_name(result: ScanResult) -> dict[str, str]:
    return {a.path.name: a.reason for a in result.set_aside}


def test_groups_nested_folders_and_files_without_extension(study_folder: Path) -> None:
    result = scan_folder(study_folder)
    assert [s.study_id for s in result.studies] == ["1.2.1", "1.2.2", "1.2.3"]
    s1, s2, s3 = result.studies
    assert (s1.route, s2.route, s3.route) == ("joint", "frontal", "lateral")
    assert s1.frontal.path == study_folder / "p1" / "s1" / "pa"
    assert s1.lateral.path.name == "lat.dcm"
    assert s1.frontal.view is View.FRONTAL and s1.lateral.view is View.LATERAL
    assert "ViewPosition" in s1.frontal.view_reason and s1.frontal.view_confidence > 0.9
    assert s2.frontal.view_position == "AP" and s2.lateral is None
    assert s3.frontal is None and s3.lateral.path.name == "x"
    assert [s.patient_id for s in result.studies] == ["P1", "P2", "P3"]
    assert result.set_aside == ()
    assert len(result.sources) == 4


def test_pa_preferred_over_ap_and_the_other_set_aside_with_reason(tmp_path: Path) -> None:
    ap = write_dicom(tmp_path / "a_ap.dcm", study_uid="1.2.5", view_position="AP", rows=128, cols=128)
    pa = write_dicom(tmp_path / "b_pa.dcm", study_uid="1.2.5", view_position="PA")
    result = scan_folder(tmp_path)
    (study,) = result.studies
    assert study.frontal.path == pa
    (aside,) = result.set_aside
    assert aside.path == ap and aside.kind == "duplicate" and aside.study_id == "1.2.5"
    assert aside.reason == f"second frontal view in study 1.2.5; kept {pa} (PA preferred over AP)"
    assert study.set_aside == result.set_aside


def test_duplicate_of_equal_rank_keeps_the_larger_then_the_first_by_path(tmp_path: Path) -> None:
    write_dicom(tmp_path / "a.dcm", study_uid="1.2.5", view_position="LL")
    big = write_dicom(tmp_path / "b.dcm", study_uid="1.2.5", view_position="LL", rows=96, cols=80)
    first = write_dicom(tmp_path / "c.dcm", study_uid="1.2.6", view_position="PA")
    write_dicom(tmp_path / "d.dcm", study_uid="1.2.6", view_position="PA")
    result = scan_folder(tmp_path)
    s, t = result.studies
    assert s.lateral.path == big and t.frontal.path == first
    reasons = aside_by_name(result)
    assert reasons["a.dcm"] == f"second lateral view in study 1.2.5; kept {big} (the larger image kept)"
    assert reasons["d.dcm"] == f"second frontal view in study 1.2.6; kept {first} (the first by path kept)"


def test_copy_of_the_same_image_is_named_as_such(tmp_path: Path) -> None:
    write_dicom(tmp_path / "a", study_uid="1.2.5", sop_uid="1.2.3.4")
    write_dicom(tmp_path / "copy" / "a", study_uid="1.2.5", sop_uid="1.2.3.4")
    result = scan_folder(tmp_path)
    assert "same SOP Instance UID" in result.set_aside[0].reason


@pytest.mark.parametrize(
    ("body_part", "kept"),
    [("KNEE", False), ("ABDOMEN", False), ("", True), (None, True), ("CHEST", True), ("PORT CHEST", True)],
)
def test_non_chest_body_part_set_aside(tmp_path: Path, body_part: str | None, kept: bool) -> None:
    write_dicom(tmp_path / "x.dcm", body_part=body_part)
    result = scan_folder(tmp_path)
    assert len(result.studies) == int(kept)
    if not kept:
        (aside,) = result.set_aside
        assert aside.kind == "not_chest"
        assert aside.reason == f"not a chest X-ray: BodyPartExamined is {body_part!r}"


@pytest.mark.parametrize(("text", "expected"), [("THORAX", True), ("Lung", True), ("HAND", False)])
def test_is_chest(text: str, expected: bool) -> None:
    assert is_chest(text) is expected


def test_unreadable_files_reported_and_scan_completes(study_folder: Path) -> None:
    (study_folder / "notes.txt").write_text("not an image")
    (study_folder / "empty").write_bytes(b"")
    write_dicom(study_folder / "ct.dcm", modality="CT")
    half = study_folder / "half.dcm"
    half.write_bytes(write_dicom(study_folder / "tmp.dcm").read_bytes()[:100])
    (study_folder / "tmp.dcm").unlink()
    result = scan_folder(study_folder)
    assert [s.study_id for s in result.studies] == ["1.2.1", "1.2.2", "1.2.3"]
    reasons = aside_by_name(result)
    assert set(reasons) == {"notes.txt", "empty", "ct.dcm", "half.dcm"}
    assert reasons["notes.txt"] == "this is not a DICOM, PNG or JPEG image"
    assert reasons["empty"] == "the file is empty (0 bytes)"
    assert "CT scan" in reasons["ct.dcm"]
    kinds = {a.path.name: a.kind for a in result.set_aside}
    assert kinds["ct.dcm"] == "not_chest" and kinds["notes.txt"] == "unreadable"
    assert all(a.study_id is None for a in result.set_aside)


def test_verify_pixels_catches_damaged_pixel_data(tmp_path: Path) -> None:
    good = write_dicom(tmp_path / "src.dcm", rows=128, cols=128)
    (tmp_path / "cut.dcm").write_bytes(good.read_bytes()[:-5000])
    good.unlink()
    assert len(scan_folder(tmp_path).studies) == 1  # the header alone looks fine
    result = scan_folder(tmp_path, verify_pixels=True)
    assert result.studies == ()
    assert "incomplete" in result.set_aside[0].reason


def test_hidden_files_tables_and_outputs_skipped_and_progress_reported(study_folder: Path) -> None:
    (study_folder / ".DS_Store").write_bytes(b"junk")
    for name in ("labels.csv", "table.tsv", "predictions.jsonl", "predictions.ndjson"):
        (study_folder / name).write_text("study_id\n")  # a rerun of predict must not list its own output
    calls: list[tuple[int, int, Path]] = []
    result = scan_folder(study_folder, progress=lambda done, total, path: calls.append((done, total, path)))
    assert result.set_aside == ()
    assert [c[:2] for c in calls] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert [c[2] for c in calls] == sorted(c[2] for c in calls)


def test_unknown_view_set_aside(tmp_path: Path) -> None:
    write_dicom(tmp_path / "obl.dcm", study_uid="1.2.5", view_position="RAO")
    write_dicom(tmp_path / "pa.dcm", study_uid="1.2.5", view_position="PA")
    result = scan_folder(tmp_path)
    (study,) = result.studies
    assert study.route == "frontal"
    (aside,) = study.set_aside
    assert aside.kind == "unknown_view"
    assert aside.reason == "unknown view: ViewPosition tag is 'RAO', an oblique view"


def test_pixels_decoded_only_when_tags_do_not_decide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_dicom(tmp_path / "tagged.dcm", study_uid="1.2.5", view_position="PA")
    untagged = write_dicom(
        tmp_path / "untagged.dcm", study_uid="1.2.5", view_position=None, pixels=phantom_film("lateral")
    )
    decoded: list[Path] = []
    real = studies_module.read_image

    def counting(path, **kwargs):
        decoded.append(Path(path))
        return real(path, **kwargs)

    monkeypatch.setattr(studies_module, "read_image", counting)
    result = scan_folder(tmp_path)
    assert decoded == [untagged]
    source = next(s for s in result.sources if s.path == untagged)
    assert source.view is View.LATERAL and "the view classifier says lateral" in source.view_reason


def test_view_the_classifier_cannot_decide_is_set_aside_with_the_reason(tmp_path: Path) -> None:
    """An untagged picture that is no chest film: set aside as unknown view, asking the user to confirm."""
    write_png(tmp_path / "s1" / "image1.png", phantom_film("frontal").astype(np.float32) / 4000 * 255)
    write_png(tmp_path / "s1" / "image2.png", np.random.default_rng(3).integers(0, 256, (128, 128)))
    result = scan_folder(tmp_path)
    assert [s.route for s in result.studies] == ["frontal"]
    (aside,) = result.set_aside
    assert aside.path.name == "image2.png" and aside.kind == "unknown_view"
    assert aside.reason.startswith("unknown view: no view tags") and aside.reason.endswith("confirm the view")


def test_overrides_rebuild_studies(study_folder: Path) -> None:
    result = scan_folder(study_folder)
    lateral = by_id(result)["1.2.1"].lateral.path
    fixed = assemble_studies(result.sources, overrides={str(lateral): View.FRONTAL})
    s1 = by_id(fixed)["1.2.1"]
    assert s1.route == "frontal"
    (aside,) = s1.set_aside
    assert aside.path == lateral and aside.kind == "duplicate"
    assert fixed.sources == result.sources  # the base for the next set of overrides

    s2 = by_id(
        assemble_studies(result.sources, overrides={by_id(result)["1.2.2"].frontal.path: View.LATERAL})
    )["1.2.2"]
    assert s2.route == "lateral"
    assert s2.lateral.view_reason == "set by the user" and s2.lateral.view_confidence == 1.0

    excluded = assemble_studies(result.sources, overrides={by_id(result)["1.2.2"].frontal.path: None})
    assert [s.study_id for s in excluded.studies] == ["1.2.1", "1.2.3"]
    assert [(a.kind, a.reason) for a in excluded.set_aside] == [("excluded", "excluded by the user")]


def test_override_fixes_unknown_view(tmp_path: Path) -> None:
    obl = write_dicom(tmp_path / "obl.dcm", study_uid="1.2.5", view_position="RAO")
    result = scan_folder(tmp_path)
    assert result.studies == ()
    fixed = assemble_studies(result.sources, overrides={obl: "lateral"})
    assert fixed.studies[0].lateral.path == obl and fixed.set_aside == ()


def test_order_is_deterministic(study_folder: Path) -> None:
    a, b = scan_folder(study_folder), scan_folder(study_folder)
    assert a == b
    shuffled = assemble_studies(reversed(a.sources))
    assert shuffled.studies == a.studies


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TwoviewError, match="no such file or folder"):
        scan_folder(tmp_path / "nope")


def test_study_needs_a_view() -> None:
    with pytest.raises(ValueError, match="needs a frontal or a lateral"):
        Study("x")


def test_sources_hold_no_pixels(study_folder: Path) -> None:
    result = scan_folder(study_folder)
    for source in result.sources:
        assert not any(isinstance(v, np.ndarray) for v in vars(source).values())


def test_phantom_scan_agrees_with_its_manifest(phantom: Path) -> None:
    from pipeline.manifest import read_manifest

    result = scan_folder(phantom)
    scanned = {s.study_id: s for s in result.studies}
    listed = {s.study_id: s for s in read_manifest(phantom / "labels.csv").studies}
    assert scanned.keys() == listed.keys()
    for study_id, study in listed.items():
        assert scanned[study_id].route == study.route
        for view in ("frontal", "lateral"):
            a, b = getattr(scanned[study_id], view), getattr(study, view)
            # with two frontals the scan keeps the larger; the generator lists the first series
            candidates = {a.path} | {x.path for x in scanned[study_id].set_aside} if a else {None}
            assert (b.path if b else None) in candidates
    assert result.set_aside and all(a.kind == "duplicate" for a in result.set_aside)  # CSVs are not read


def test_loose_pictures_are_grouped_by_folder(tmp_path):
    def source(path: Path, uid: str = "") -> ImageSource:
        return ImageSource(path, None, "", 0.0, study_id=path.stem, study_uid=uid)

    flat = [source(tmp_path / "flat" / f"{i}.png") for i in range(MAX_PICTURES_PER_FOLDER_STUDY + 1)]
    grouped = group_loose_pictures(
        [
            source(tmp_path / "a.png"),
            source(tmp_path / "b.png"),
            source(tmp_path / "zip" / "s1" / "c.png"),
            source(tmp_path / "d.dcm", "1.2.3"),
            *flat,
        ],
        tmp_path,
        root_study="upload",
    )
    ids = [s.study_id for s in grouped]
    assert ids[:4] == ["upload", "upload", "zip/s1", "d"]
    assert ids[4:] == [s.study_id for s in flat]  # a flat export: each picture its own study


def test_a_scanned_study_folder_of_pictures_is_one_study(tmp_path):
    write_png(tmp_path / "p1" / "s1" / "view1_frontal.png")
    write_png(tmp_path / "p1" / "s1" / "view2_lateral.png")
    write_png(tmp_path / "p2" / "s1" / "view1_frontal.png")
    scan = scan_folder(tmp_path)
    assert [(s.study_id, s.route) for s in scan.studies] == [("p1/s1", "joint"), ("p2/s1", "frontal")]


def test_pipes_sockets_devices_and_links_are_set_aside_unopened(tmp_path: Path) -> None:
    """A FIFO would block an open forever (the test would time out); links never lead out of the folder."""
    root, outside = tmp_path / "scan", tmp_path / "outside"
    write_dicom(root / "good.dcm", study_uid="1.2.9")
    write_dicom(outside / "secret.dcm", study_uid="1.2.8")
    os.mkfifo(root / "pipe")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(root / "sock"))
    try:
        os.mknod(root / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        (root / "null").symlink_to("/dev/null")  # a device through a link: refused as outside the folder
    (root / "inside").symlink_to(root / "good.dcm")
    (root / "out").symlink_to(outside / "secret.dcm")
    (root / "etc").symlink_to(outside, target_is_directory=True)
    (root / "dangling").symlink_to(root / "gone")
    (root / "loop").symlink_to(root / "loop")
    try:
        result = scan_folder(root)
    finally:
        listener.close()
    assert [s.study_id for s in result.studies] == ["1.2.9"]
    used = {s.path.name for s in result.sources}
    assert used == {"good.dcm", "inside"}  # the link inside the folder is read like its target
    reasons = aside_by_name(result)
    assert reasons["pipe"] == "not a regular file: a named pipe (FIFO)"
    assert reasons["sock"] == "not a regular file: a socket"
    assert reasons["null"] in (
        "not a regular file: a device",
        "a link to a file outside the scanned folder: not followed",
    )
    assert reasons["out"] == "a link to a file outside the scanned folder: not followed"
    assert reasons["etc"] == "a link to a folder: not followed"
    assert reasons["dangling"].startswith("the file cannot be read")
    assert reasons["loop"].startswith("the file cannot be read")
    assert "same SOP Instance UID" in reasons["inside"]  # a copy of good.dcm in the same study
    assert all(a.kind == "unreadable" for a in result.set_aside if a.path.name != "inside")


def scan_unprivileged(root: Path) -> tuple[list[str], dict[str, str]]:
    """`scan_folder(root)` in a forked child that runs as `nobody` (when we are root, which ignores modes)."""
    context = multiprocessing.get_context("fork")
    answers = context.SimpleQueue()

    def child() -> None:
        if os.geteuid() == 0:
            os.setgid(65534)
            os.setuid(65534)
        try:
            result = scan_folder(root)
            answers.put(
                ([s.study_id for s in result.studies], {str(a.path): a.reason for a in result.set_aside})
            )
        except BaseException as err:  # report anything, so the parent can fail with it
            answers.put(repr(err))

    process = context.Process(target=child)
    process.start()
    answer = answers.get()
    process.join()
    assert not isinstance(answer, str), answer
    return answer


def test_permission_errors_set_entries_aside_and_the_scan_goes_on() -> None:
    """A folder listed but not searchable made `is_file()`/`is_symlink()` raise and abort the whole scan."""
    base = Path(tempfile.mkdtemp(prefix="twoview-perm-", dir="/tmp"))  # reachable by an unprivileged user
    try:
        base.chmod(0o755)
        write_dicom(base / "good.dcm", study_uid="1.2.7")
        write_dicom(base / "locked" / "a.dcm", study_uid="1.2.6")
        write_dicom(base / "listed" / "b.dcm", study_uid="1.2.5")
        (base / "listed" / "deeper").mkdir()
        write_dicom(base / "listed" / "deeper" / "c.dcm", study_uid="1.2.4")
        (base / "locked").chmod(0o000)  # cannot be listed
        (base / "listed").chmod(0o644)  # names can be listed, but nothing inside can be looked at
        studies, aside = scan_unprivileged(base)
    finally:
        for folder in (base / "locked", base / "listed"):
            folder.chmod(0o755)
        shutil.rmtree(base)
    assert studies == ["1.2.7"]
    assert aside[str(base / "locked")] == "the folder cannot be read (Permission denied)"
    assert aside[str(base / "listed" / "b.dcm")] == "the file cannot be read (Permission denied)"
    assert aside[str(base / "listed" / "deeper")] == "the folder cannot be read (Permission denied)"


def test_a_root_that_cannot_be_read_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TwoviewError, match="no such file or folder"):
        scan_folder(tmp_path / "missing")
