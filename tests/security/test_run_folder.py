"""Datasets and the run folder: case ids are derived in one place, from a safe character
set, never ".", ".." or a name the run folder uses itself; collisions keep their suffix
(logged), a manifest cannot point outside its folder, single-frame GIFs are read and
other files are reported; no delete or write leaves the run folder; result files honour
the umask and hold no registered secret."""

from __future__ import annotations

import io
import json
import logging
import os
import stat
from pathlib import Path

import pytest
from PIL import Image

from regen.common import secrets
from regen.orchestrator.dataset import MAX_ID_CHARS, DatasetError, resolve_dataset
from regen.orchestrator.results import RESERVED_NAMES, RunLayout, UnsafePath, atomic_write_json, read_json


def image_bytes(fmt: str = "PNG", frames: int = 1) -> bytes:
    buf = io.BytesIO()
    first, *rest = [Image.new("RGB", (16, 16), (40 * i, 80, 120)) for i in range(frames)]
    first.save(buf, format=fmt, save_all=frames > 1, append_images=rest)
    return buf.getvalue()


def ids_of(folder: Path) -> dict[str, str]:
    return {case.path.name: case.id for case in resolve_dataset(str(folder)).cases}


def test_hostile_file_names_become_safe_distinct_case_ids(tmp_path: Path, caplog) -> None:
    names = [
        "run.json.png",
        "benchmark_final.json.png",
        "report.html.png",
        "report_files.png",
        "a b;c$(x).png",
        "ünïcode.png",
        "-.png",
        f"{'x' * 240}.png",
        "plain.jpg",
        "plain.tiff",
        "Upper.png",
        "upper.webp",
    ]
    for name in names:
        fmt = {"jpg": "JPEG", "tiff": "TIFF", "webp": "WEBP"}.get(name.rsplit(".", 1)[1], "PNG")
        (tmp_path / name).write_bytes(image_bytes(fmt))
    for hidden in ("...png", "..png"):  # were cases ".." and "."; hidden files are reported, not read
        (tmp_path / hidden).write_bytes(image_bytes())
    caplog.set_level(logging.INFO)
    ids = ids_of(tmp_path)
    assert "...png, ..png" in caplog.text
    assert len(ids) == len(names) and len(set(i.lower() for i in ids.values())) == len(names), ids
    for case_id in ids.values():
        assert case_id not in (".", "..") and case_id.lower() not in {n.lower() for n in RESERVED_NAMES}
        assert case_id.replace("_", "").replace("-", "").isalnum() and case_id.isascii(), case_id
        assert len(case_id) <= MAX_ID_CHARS + 10
        RunLayout(tmp_path / "run").case_dir(case_id)  # accepted as a case folder
    assert ids["plain.jpg"] == "plain_jpg" and ids["plain.tiff"] == "plain_tiff"
    assert "plain.jpg shares its name with another file; it is case 'plain_jpg'" in caplog.text
    assert ids["run.json.png"] == "run_json" and ids["report_files.png"] == "case_report_files"


def test_gif_is_read_and_other_files_are_reported(tmp_path: Path, caplog) -> None:
    (tmp_path / "still.gif").write_bytes(image_bytes("GIF"))
    (tmp_path / "moving.gif").write_bytes(image_bytes("GIF", frames=3))
    (tmp_path / "photo.heic").write_bytes(b"not really")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "folder.png").mkdir()
    caplog.set_level(logging.WARNING)
    dataset = resolve_dataset(str(tmp_path))
    assert sorted(case.id for case in dataset.cases) == ["moving", "still"]
    assert "folder.png, notes.txt, photo.heic" in caplog.text and ".gif" in caplog.text
    from regen.common.images import ImageDecodeError
    from regen.orchestrator.dataset import load_reference_png

    by_id = {case.id: case for case in dataset.cases}
    assert load_reference_png(by_id["still"]).startswith(b"\x89PNG")
    with pytest.raises(ImageDecodeError, match=r"moving\.gif: animated GIF with 3 frames"):
        load_reference_png(by_id["moving"])


@pytest.mark.parametrize("file", ["../outside.png", "/etc/passwd", "sub/../../outside.png", "", 7])
def test_a_manifest_cannot_name_files_outside_its_folder(tmp_path: Path, file) -> None:
    (tmp_path / "outside.png").write_bytes(image_bytes())
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / "MANIFEST.json").write_text(json.dumps({"images": [{"file": file}]}))
    with pytest.raises(DatasetError, match=r"outside the dataset folder|is not a file name"):
        resolve_dataset(str(folder))


def test_manifest_ids_are_made_safe_too(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("...png", "sub/a.png", "a.png"):
        (tmp_path / name).write_bytes(image_bytes())
    (tmp_path / "MANIFEST.json").write_text(
        json.dumps({"images": [{"file": n} for n in ("...png", "sub/a.png", "a.png")]})
    )
    ids = {case.path.relative_to(tmp_path).as_posix(): case.id for case in resolve_dataset(str(tmp_path)).cases}
    assert ids == {"...png": "case", "sub/a.png": "a_png", "a.png": "a_png_2"}


def test_case_folders_and_deletes_stay_inside_the_run_folder(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path / "run")
    layout.root.mkdir()
    for bad in ("..", ".", "", "a/b", "../x", *RESERVED_NAMES):
        with pytest.raises(UnsafePath):
            layout.case_dir(bad)
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    (layout.root / "linked").symlink_to(outside, target_is_directory=True)
    layout.reset_case("linked")  # removes the link, never what it points at
    assert not (layout.root / "linked").exists() and (outside / "keep.txt").read_text() == "mine"
    with pytest.raises(UnsafePath):
        layout.check_inside(layout.root)
    with pytest.raises(UnsafePath):
        layout.check_inside(tmp_path / "precious" / "keep.txt")


def test_result_files_honour_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        os.umask(0o077)
        atomic_write_json(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o600


def test_written_results_hold_no_registered_secret(tmp_path: Path) -> None:
    key = "sk-results-0123456789abcdef"
    secrets.register(key)
    try:
        atomic_write_json(tmp_path / "error.json", {"failure": {"error": f"upstream said: bad key {key}"}})
    finally:
        secrets.forget_all()
    assert key not in (tmp_path / "error.json").read_text()
    assert read_json(tmp_path / "error.json")["failure"]["error"] == "upstream said: bad key [redacted]"
