"""Tests of the image preparation (`maml_tf/data/prepare.py`, `data/prepare_*.py`).

Small and fast: a few Omniglot characters of `../shared/data/omniglot/images_background_small1.zip`
and synthetic MiniImagenet JPEGs named after rows of `../shared/data/miniimagenet/*.csv`.
Tests that need a `../shared` file skip when it is missing.
"""

import csv
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maml_tf.data import prepare

from tests.conftest import ROOT, SHARED, shared_path as shared  # noqa: F401


def quiet(_line: str) -> None:
    pass


def pngs(folder: Path):
    return sorted(folder.rglob("*.png"))


def leftovers(parent: Path):
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name)


# ------------------------------------------------------------------ Omniglot
@pytest.fixture(scope="module")
def small1() -> Path:
    return shared("data", "omniglot", "images_background_small1.zip")


def test_prepare_omniglot_resizes_to_antialiased_greyscale(small1, tmp_path):
    out = prepare.prepare_omniglot([small1], tmp_path / "omniglot_resized", max_characters=3, log=quiet)
    characters = sorted(p.relative_to(out).as_posix() for p in out.glob("*/*") if p.is_dir())
    assert characters == ["Balinese/character01", "Balinese/character02", "Balinese/character03"]
    files = pngs(out)
    assert len(files) == 3 * 20
    with zipfile.ZipFile(small1) as archive:  # Same file names as the release.
        released = {n.split("/", 1)[1] for n in archive.namelist() if n.endswith(".png")}
    assert {f.relative_to(out).as_posix() for f in files} <= released
    values = set()
    for f in files:
        with Image.open(f) as image:
            assert image.mode == "L" and image.size == (28, 28)
            values |= set(np.unique(np.asarray(image)).tolist())
    assert {0, 255} <= values and len(values) > 10  # Antialiased: grey levels between.
    assert prepare.read_marker(out)["num_images"] == 60
    assert leftovers(tmp_path) == []


def test_prepare_omniglot_binary_is_the_original_nearest_resize(small1, tmp_path):
    out = prepare.prepare_omniglot([small1], tmp_path / "out", max_characters=1, binary=True, log=quiet)
    for f in pngs(out):
        with Image.open(f) as image:
            assert image.mode == "1" and image.size == (28, 28)
            assert set(np.unique(np.asarray(image.convert("L"))).tolist()) <= {0, 255}


def test_resize_converts_mode_1_before_lanczos(small1):
    with zipfile.ZipFile(small1) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".png"))
        data = archive.read(name)
    with Image.open(io.BytesIO(data)) as release:
        assert release.mode == "1"  # Why the conversion matters: Pillow resizes mode '1' with NEAREST.
        expected = np.asarray(release.convert("L").resize((28, 28), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(np.asarray(prepare.resize_omniglot_image(data)), expected)


def test_prepare_omniglot_rerun_is_safe(small1, tmp_path):
    out = tmp_path / "omniglot_resized"
    prepare.prepare_omniglot([small1], out, max_characters=1, log=quiet)
    first = {f: f.stat().st_mtime_ns for f in pngs(out)}
    lines = []
    prepare.prepare_omniglot([small1], out, max_characters=1, log=lines.append)  # Complete: left alone.
    assert {f: f.stat().st_mtime_ns for f in pngs(out)} == first
    assert any("already prepared" in line for line in lines)
    with pytest.raises(prepare.PreparationError, match="--overwrite"):  # Other options: refuse.
        prepare.prepare_omniglot([small1], out, max_characters=1, binary=True, log=quiet)
    prepare.prepare_omniglot([small1], out, max_characters=1, binary=True, overwrite=True, log=quiet)
    assert prepare.read_marker(out)["options"]["binary"] is True
    with Image.open(pngs(out)[0]) as image:
        assert image.mode == "1"
    assert leftovers(tmp_path) == []


def test_a_killed_overwrite_leaves_nothing_behind_for_the_next_run(small1, tmp_path):
    out = tmp_path / "omniglot_resized"
    prepare.prepare_omniglot([small1], out, max_characters=1, log=quiet)
    (tmp_path / ".omniglot_resized.partial-abc123").mkdir()  # What a --overwrite run killed midway leaves.
    prepare.prepare_omniglot([small1], out, max_characters=1, log=quiet)  # Complete: left alone, leftover removed.
    assert leftovers(tmp_path) == []


def test_prepare_omniglot_refuses_a_foreign_folder(small1, tmp_path):
    out = tmp_path / "omniglot_resized"
    (out / "mine").mkdir(parents=True)
    with pytest.raises(prepare.PreparationError, match="no marker"):
        prepare.prepare_omniglot([small1], out, max_characters=1, log=quiet)
    assert (out / "mine").is_dir()


def test_interrupted_preparation_leaves_nothing_that_looks_complete(small1, tmp_path, monkeypatch):
    calls = []

    def failing(*args):
        calls.append(args)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return resize(*args)

    resize = prepare._resize_omniglot_file
    monkeypatch.setattr(prepare, "_resize_omniglot_file", failing)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare_omniglot([small1], tmp_path / "omniglot_resized", max_characters=1, log=quiet)
    assert sorted(os.listdir(tmp_path)) == []


def test_missing_omniglot_source_is_a_clear_error(tmp_path):
    with pytest.raises(prepare.SourceNotFoundError, match="does not exist"):
        prepare.find_omniglot_sources(tmp_path / "nowhere")
    (tmp_path / "images_background.zip").write_bytes(b"")
    with pytest.raises(prepare.SourceNotFoundError, match="images_evaluation.zip"):
        prepare.find_omniglot_sources(tmp_path)
    assert isinstance(prepare.SourceNotFoundError("x"), FileNotFoundError)


def run_script(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_omniglot_cli_missing_source_exits_with_message(tmp_path):
    result = run_script("data/prepare_omniglot.py", "--source", str(tmp_path / "nowhere"),
                        "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "images_background.zip" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_omniglot_cli_on_extracted_folders(small1, tmp_path):
    # An extracted release: two characters in images_background/, one in images_evaluation/.
    source = tmp_path / "release"
    with zipfile.ZipFile(small1) as archive:
        for name in archive.namelist():
            parts = name.split("/")
            if name.endswith(".png") and parts[1] == "Greek" and parts[2] in ("character01", "character02"):
                part = "images_evaluation" if parts[2] == "character02" else "images_background"
                target = source / part / parts[1] / parts[2] / parts[3]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(name))
    out = tmp_path / "data" / "omniglot_resized"
    result = run_script("data/prepare_omniglot.py", "--source", str(source), "--out", str(out), "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert "40/40 images" in result.stdout  # Progress output.
    assert len(pngs(out)) == 40 and sorted(os.listdir(out / "Greek")) == ["character01", "character02"]
    again = run_script("data/prepare_omniglot.py", "--source", str(source), "--out", str(out))
    assert again.returncode == 0 and "already prepared" in again.stdout


# -------------------------------------------------------------- MiniImagenet
def write_miniimagenet_source(root: Path, per_split=None, grey_first=True) -> Path:
    """Truncated Ravi & Larochelle CSVs (first classes/rows) and synthetic images with their names.

    Args:
      per_split: {split: (classes, images per class)}.

    Returns:
      The source folder (CSVs, and images/ with odd-sized JPEGs).
    """
    per_split = per_split or {"train": (2, 3), "val": (1, 2), "test": (1, 2)}
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, (num_classes, per_class) in per_split.items():
        with open(shared("data", "miniimagenet", f"{split}.csv"), newline="") as f:
            rows = list(csv.reader(f))[1:]
        chosen, labels = [], []
        for name, label in rows:
            if label not in labels:
                if len(labels) == num_classes:
                    continue
                labels.append(label)
            if sum(1 for _, c in chosen if c == label) < per_class:
                chosen.append((name, label))
        with open(root / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["filename", "label"])
            writer.writerows(chosen)
        for i, (name, _) in enumerate(chosen):
            size = (int(rng.integers(90, 130)), int(rng.integers(90, 130)))
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            image = Image.fromarray(pixels, "RGB")
            if grey_first and split == "train" and i == 0:
                image = image.convert("L")  # Some ImageNet JPEGs are greyscale.
            image.save(images / name, format="JPEG")
    return root


def test_prepare_miniimagenet_layout_and_size(tmp_path):
    source = write_miniimagenet_source(tmp_path / "src")
    out = prepare.prepare_miniimagenet(source, source / "images", tmp_path / "miniImagenet", log=quiet)
    for split in ("train", "val", "test"):
        rows = prepare.read_miniimagenet_csv(source / f"{split}.csv")
        files = sorted((out / split).glob("*/*"))
        assert sorted(f.relative_to(out / split).as_posix() for f in files) == sorted(f"{c}/{n}" for n, c in rows)
        for f in files:
            with Image.open(f) as image:
                assert image.format == "JPEG" and image.mode == "RGB" and image.size == (84, 84)
    assert len(list(out.glob("train/*/*.jpg"))) == 6
    assert len(os.listdir(source / "images")) == 10  # Sources are read, not moved.
    assert prepare.read_marker(out)["num_images_per_split"] == {"train": 6, "val": 2, "test": 2}
    # Re-run: left alone; other size without --overwrite: refused.
    before = {f: f.stat().st_mtime_ns for f in out.rglob("*.jpg")}
    prepare.prepare_miniimagenet(source, source / "images", out, log=quiet)
    assert {f: f.stat().st_mtime_ns for f in out.rglob("*.jpg")} == before
    with pytest.raises(prepare.PreparationError, match="--overwrite"):
        prepare.prepare_miniimagenet(source, source / "images", out, size=32, log=quiet)
    assert leftovers(tmp_path) == []


def test_prepare_miniimagenet_resize_is_lanczos(tmp_path):
    source = tmp_path / "a.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (120, 100, 3), dtype=np.uint8)).save(source)
    with Image.open(source) as image:
        expected = np.asarray(image.convert("RGB").resize((84, 84), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(np.asarray(prepare.resize_miniimagenet_image(source)), expected)


def test_prepare_miniimagenet_missing_sources(tmp_path):
    source = write_miniimagenet_source(tmp_path / "src")
    with pytest.raises(prepare.SourceNotFoundError, match="nowhere"):
        prepare.prepare_miniimagenet(tmp_path / "nowhere", source / "images", tmp_path / "out", log=quiet)
    first = prepare.read_miniimagenet_csv(source / "val.csv")[0][0]
    (source / "images" / first).unlink()
    with pytest.raises(prepare.SourceNotFoundError, match=first):
        prepare.prepare_miniimagenet(source, source / "images", tmp_path / "out", log=quiet)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    result = run_script("data/prepare_miniimagenet.py", "--source", str(tmp_path / "nowhere"),
                        "--out", str(tmp_path / "out"))
    assert result.returncode == 1 and "train.csv" in result.stderr and "Traceback" not in result.stderr


def test_miniimagenet_cli(tmp_path):
    source = write_miniimagenet_source(tmp_path / "src", {"train": (1, 2), "val": (1, 1), "test": (1, 1)})
    out = tmp_path / "miniImagenet"
    result = run_script("data/prepare_miniimagenet.py", "--source", str(source), "--out", str(out),
                        "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert len(list(out.glob("*/*/*.jpg"))) == 4 and "4/4 images" in result.stdout
