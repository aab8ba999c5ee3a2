"""Preparation of the image data sets: Omniglot and MiniImagenet resized on disk.

The original repository ships two small scripts that resize the images in place
(`data/omniglot_resized/resize_images.py`, `data/miniImagenet/proc_images.py`).
This module does the same work from the untouched releases, with the library
logic here and thin command lines in `data/prepare_omniglot.py` and
`data/prepare_miniimagenet.py`:

* Omniglot: Lake's release (`images_background.zip` and `images_evaluation.zip`,
  or the extracted folders) -> `OUT/<alphabet>/<character>/<file>.png`, 28x28,
  PIL LANCZOS.
* MiniImagenet: the Ravi & Larochelle CSVs (`train.csv`, `val.csv`, `test.csv`,
  header `filename,label`) and a folder of the original images ->
  `OUT/{train,val,test}/<label>/<filename>`, 84x84, PIL LANCZOS.

Every preparation writes into a temporary sibling folder (`.<name>.partial-*`)
and renames it to `OUT` only when it is complete, so an interrupted run never
leaves a folder that looks usable. A complete output carries a marker file
(`.prepared.json`) with the options it was made with; re-running with the same
options leaves it alone, `overwrite=True` replaces it (the old folder is kept
until the new one is complete).

This module imports only Pillow and numpy (no TensorFlow), so the command lines
start quickly.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from PIL import Image

OMNIGLOT_ARCHIVES = ("images_background", "images_evaluation")
OMNIGLOT_SIZE = 28
MINIIMAGENET_SIZE = 84
MINIIMAGENET_SPLITS = ("train", "val", "test")
MARKER_NAME = ".prepared.json"
# Pillow's default JPEG quality: the original's `im.save(image_file)` used it.
JPEG_QUALITY = 75

Log = Callable[[str], None]


class PreparationError(Exception):
    """A preparation that cannot run; the message says what to do."""


class SourceNotFoundError(PreparationError, FileNotFoundError):
    """The source files of a preparation are missing."""


# =========================================================================
# Shared: atomic output folder, progress, parallel jobs
# =========================================================================

def read_marker(out: os.PathLike) -> Optional[dict]:
    """The options a complete output folder was prepared with.

    Args:
      out: an output folder of `prepare_omniglot` or `prepare_miniimagenet`.

    Returns:
      The marker's dictionary, or None when `out` has no (readable) marker.
    """
    try:
        with open(Path(out) / MARKER_NAME) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _existing_output_is_reusable(out: Path, options: dict, overwrite: bool, log: Log) -> bool:
    """Decides what to do with an existing `out`: True means leave it alone and stop.

    Raises:
      PreparationError: `out` exists, was not made with `options`, and
        `overwrite` is False.
    """
    _remove_leftovers(out, log)  # Also when `out` is kept: a killed --overwrite leaves its staging folder.
    if not out.exists() or overwrite or (out.is_dir() and not any(out.iterdir())):
        return False  # Nothing there (an empty folder counts as nothing), or to be replaced.
    marker = read_marker(out)
    if marker is not None and marker.get("options") == options:
        log(f"{out} is already prepared ({marker.get('num_images')} images); leaving it alone "
            f"(pass --overwrite to prepare it again).")
        return True
    if marker is None:
        why = "was not written by this preparation (no marker file)"
    else:
        why = f"was prepared with other options {marker.get('options')}"
    raise PreparationError(f"{out} already exists and {why}; wanted {options}. "
                           f"Pass --overwrite to replace it, or choose another --out.")


def _remove_leftovers(out: Path, log: Log) -> None:
    """Removes the staging folders (`.<name>.partial-*`) of killed preparations of `out`."""
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        log(f"Removing the leftover of an interrupted run: {stale}")
        shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def _staging_folder(out: Path, log: Log) -> Iterator[Path]:
    """A temporary sibling of `out` that becomes `out` when the block succeeds.

    Leftover staging folders of killed runs are removed first. On any error
    (also Ctrl-C) the staging folder is deleted and `out` is untouched. An
    existing `out` is replaced only after the new one is complete.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out, log)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; `out` should not be.
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        old = out.parent / f".{out.name}.partial-old-{os.getpid()}"
        os.rename(out, old)
        os.rename(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, out)


def _write_marker(folder: Path, options: dict, **info) -> None:
    with open(folder / MARKER_NAME, "w") as f:
        json.dump({"options": options, **info}, f, indent=1, sort_keys=True)


class _Progress:
    """Prints `label: done/total` about every `every` items and at the end."""

    def __init__(self, label: str, total: int, log: Log, every: int = 2000):
        self.label, self.total, self.log, self.every = label, total, log, every
        self.done, self.start = 0, time.time()

    def advance(self, n: int = 1) -> None:
        before = self.done
        self.done += n
        if self.done // self.every != before // self.every or self.done == self.total:
            self.log(f"{self.label}: {self.done}/{self.total} images ({time.time() - self.start:.1f} s)")


def _run_jobs(fn: Callable, jobs: Sequence[tuple], workers: int, progress: _Progress) -> None:
    """Runs `fn(*job)` for every job, in `workers` processes (1: in this one)."""
    if workers <= 1 or len(jobs) < 2:
        for job in jobs:
            fn(*job)
            progress.advance()
        return
    chunk = 256
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_run_chunk, fn, jobs[i:i + chunk]) for i in range(0, len(jobs), chunk)]
        for future in concurrent.futures.as_completed(futures):
            progress.advance(future.result())


def _run_chunk(fn: Callable, jobs: Sequence[tuple]) -> int:
    for job in jobs:
        fn(*job)
    return len(jobs)


def default_workers() -> int:
    """Worker processes used when none is given: the usable CPU cores."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # Not on Linux.
        return os.cpu_count() or 1


# =========================================================================
# Omniglot
# =========================================================================

def find_omniglot_sources(source_dir: os.PathLike) -> List[Path]:
    """The two parts of Lake's Omniglot release inside `source_dir`.

    For each of `images_background` and `images_evaluation`, an extracted
    folder of that name is preferred over the `.zip` of that name.

    Args:
      source_dir: the folder holding the release files (e.g. the `python/`
        folder of github.com/brendenlake/omniglot).

    Returns:
      The two paths (folders or zip files), background first.

    Raises:
      SourceNotFoundError: `source_dir` or one of the two parts is missing.
    """
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise SourceNotFoundError(
            f"Omniglot source folder {source_dir} does not exist; expected a folder with "
            f"{' and '.join(n + '.zip' for n in OMNIGLOT_ARCHIVES)} (or the extracted folders) "
            f"from github.com/brendenlake/omniglot (folder python/).")
    found, missing = [], []
    for name in OMNIGLOT_ARCHIVES:
        folder, archive = source_dir / name, source_dir / f"{name}.zip"
        if folder.is_dir():
            found.append(folder)
        elif archive.is_file():
            found.append(archive)
        else:
            missing.append(f"{archive} (or the folder {folder})")
    if missing:
        raise SourceNotFoundError(
            "Omniglot source incomplete: missing " + "; ".join(missing) +
            ". Download images_background.zip and images_evaluation.zip from "
            "github.com/brendenlake/omniglot (folder python/).")
    return found


def read_omniglot_source(source: os.PathLike,
                         max_characters: Optional[int] = None) -> Dict[Tuple[str, str], List[Tuple[str, bytes]]]:
    """Reads the PNG files of one part of the Omniglot release.

    Args:
      source: a zip of the release (`images_background.zip`,
        `images_background_small1.zip`, ...; inside: `<root>/<alphabet>/<character>/<file>.png`)
        or an extracted folder (`<alphabet>/<character>/<file>.png`).
      max_characters: keep only the first characters in sorted
        (alphabet, character) order (for quick tests); None keeps all.

    Returns:
      `{(alphabet, character): [(file name, PNG bytes), ...]}`, characters
      in sorted order and the files of a character sorted by name.

    Raises:
      SourceNotFoundError: `source` is missing or holds no PNG.
    """
    source = Path(source)
    characters: Dict[Tuple[str, str], List[Tuple[str, bytes]]] = {}
    if source.is_dir():
        for path in source.glob("*/*/*.png"):
            alphabet, character = path.parent.parent.name, path.parent.name
            characters.setdefault((alphabet, character), []).append((path.name, path))
    elif source.is_file() and zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            for name in archive.namelist():
                parts = name.split("/")
                # Skip folders and macOS metadata; keep <...>/<alphabet>/<character>/<file>.png.
                if len(parts) < 3 or not name.lower().endswith(".png") or "__MACOSX" in parts:
                    continue
                characters.setdefault((parts[-3], parts[-2]), []).append((parts[-1], name))
            keys = sorted(characters)[:max_characters]
            return {k: [(f, archive.read(n)) for f, n in sorted(characters[k])] for k in keys}
    else:
        raise SourceNotFoundError(f"Omniglot source {source} is neither a folder nor a zip file.")
    if not characters:
        raise SourceNotFoundError(f"No <alphabet>/<character>/*.png found in {source}.")
    keys = sorted(characters)[:max_characters]
    return {k: [(f, p.read_bytes()) for f, p in sorted(characters[k])] for k in keys}


def resize_omniglot_image(png: bytes, size: int = OMNIGLOT_SIZE, binary: bool = False) -> Image.Image:
    """Resizes one 105x105 Omniglot image with PIL LANCZOS.

    The release's PNGs have mode '1' (1 bit per pixel). Pillow resizes mode
    '1' images with NEAREST whatever filter is asked for, so the original
    `resize_images.py` produced binary, aliased 28x28 images although it asked
    for LANCZOS.

    Args:
      png: the bytes of a release PNG.
      size: output width and height.
      binary: True reproduces the original exactly (mode '1', NEAREST in
        effect); False (default) converts to 8-bit greyscale 'L' first, so
        LANCZOS really applies and the edges are antialiased.

    Returns:
      The resized image, mode 'L' (or '1' when `binary`).
    """
    image = Image.open(io.BytesIO(png))
    if not binary:
        # Deliberate difference from the original: antialiased greyscale, see above.
        image = image.convert("L")
    return image.resize((size, size), resample=Image.Resampling.LANCZOS)


def _resize_omniglot_file(png: bytes, destination: str, size: int, binary: bool) -> None:
    resize_omniglot_image(png, size, binary).save(destination, format="PNG")


def prepare_omniglot(sources: Sequence[os.PathLike], out: os.PathLike, *, size: int = OMNIGLOT_SIZE,
                     binary: bool = False, overwrite: bool = False, max_characters: Optional[int] = None,
                     workers: int = 1, log: Log = print) -> Path:
    """Writes `out/<alphabet>/<character>/<file>.png`, every image resized to `size`x`size`.

    Args:
      sources: parts of the release (see `find_omniglot_sources` and
        `read_omniglot_source`); alphabets of all parts end up side by side in `out`.
      out: the output folder (the original's `data/omniglot_resized`).
      size: output width and height (28, as the original).
      binary: the original's binary images (see `resize_omniglot_image`).
      overwrite: replace an existing `out`.
      max_characters: only the first characters of each source (for tests).
      workers: processes that resize (1: none started).
      log: receives progress lines.

    Returns:
      `out` as a Path.

    Raises:
      SourceNotFoundError: a source is missing.
      PreparationError: `out` exists and was made otherwise, without `overwrite`.
    """
    out = Path(out)
    options = {"dataset": "omniglot", "size": size, "binary": binary, "max_characters": max_characters}
    if _existing_output_is_reusable(out, options, overwrite, log):
        return out
    characters: Dict[Tuple[str, str], List[Tuple[str, bytes]]] = {}
    for source in sources:
        log(f"Reading {source}")
        part = read_omniglot_source(source, max_characters)
        duplicates = set(part) & set(characters)
        if duplicates:
            raise PreparationError(f"{source} repeats characters of another source, e.g. {sorted(duplicates)[0]}.")
        characters.update(part)
    with _staging_folder(out, log) as staging:
        jobs = []
        for (alphabet, character), files in sorted(characters.items()):
            folder = staging / alphabet / character
            folder.mkdir(parents=True)
            jobs.extend((png, str(folder / name), size, binary) for name, png in files)
        progress = _Progress(f"Resizing to {size}x{size}", len(jobs), log)
        _run_jobs(_resize_omniglot_file, jobs, workers, progress)
        _write_marker(staging, options, num_images=len(jobs), num_classes=len(characters),
                      sources=[str(s) for s in sources])
    log(f"Wrote {len(jobs)} images of {len(characters)} characters to {out}")
    return out


# =========================================================================
# MiniImagenet
# =========================================================================

def read_miniimagenet_csv(path: os.PathLike) -> List[Tuple[str, str]]:
    """Rows of one Ravi & Larochelle split file.

    Args:
      path: `train.csv`, `val.csv` or `test.csv` (header `filename,label`).

    Returns:
      `[(filename, label), ...]` in file order.

    Raises:
      SourceNotFoundError: the file is missing.
      PreparationError: the header is not `filename,label`.
    """
    path = Path(path)
    if not path.is_file():
        raise SourceNotFoundError(f"MiniImagenet split file {path} not found; expected train.csv, val.csv and "
                                  f"test.csv of Ravi & Larochelle (2017), header 'filename,label'.")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise PreparationError(f"{path} must start with the header 'filename,label'; got {rows[:1]}.")
    return [(row[0].strip(), row[1].strip()) for row in rows[1:] if row]


def resize_miniimagenet_image(source: os.PathLike, size: int = MINIIMAGENET_SIZE) -> Image.Image:
    """One ImageNet image resized to `size`x`size` with PIL LANCZOS, as `proc_images.py`.

    Args:
      source: path of the original image.
      size: output width and height.

    Returns:
      The resized RGB image (aspect ratio not kept, as the original).
    """
    with Image.open(source) as image:
        # Deliberate difference: the original resized in the file's own mode (a few ImageNet
        # JPEGs are greyscale or CMYK) and let TensorFlow's decoder make RGB; converting
        # first makes every output file RGB. Identical for RGB sources.
        return image.convert("RGB").resize((size, size), resample=Image.Resampling.LANCZOS)


def _resize_miniimagenet_file(source: str, destination: str, size: int) -> None:
    resize_miniimagenet_image(source, size).save(destination, format="JPEG", quality=JPEG_QUALITY)


def prepare_miniimagenet(csv_dir: os.PathLike, images_dir: os.PathLike, out: os.PathLike, *,
                         size: int = MINIIMAGENET_SIZE, overwrite: bool = False, workers: int = 1,
                         log: Log = print) -> Path:
    """Writes `out/{train,val,test}/<label>/<filename>`, every image resized to `size`x`size`.

    Unlike the original script, the source images are read, not moved or
    overwritten, and nothing is shelled out.

    Args:
      csv_dir: folder with `train.csv`, `val.csv`, `test.csv`.
      images_dir: folder with the original images, named as in the CSVs.
      out: the output folder (the original's `data/miniImagenet`).
      size: output width and height (84, as the original).
      overwrite: replace an existing `out`.
      workers: processes that resize (1: none started).
      log: receives progress lines.

    Returns:
      `out` as a Path.

    Raises:
      SourceNotFoundError: a CSV, the image folder or images listed in the CSVs are missing.
      PreparationError: `out` exists and was made otherwise, without `overwrite`.
    """
    csv_dir, images_dir, out = Path(csv_dir), Path(images_dir), Path(out)
    options = {"dataset": "miniimagenet", "size": size}
    if _existing_output_is_reusable(out, options, overwrite, log):
        return out
    splits = {split: read_miniimagenet_csv(csv_dir / f"{split}.csv") for split in MINIIMAGENET_SPLITS}
    if not images_dir.is_dir():
        example = next((rows[0][0] for rows in splits.values() if rows), "n0153282900000005.jpg")
        raise SourceNotFoundError(f"MiniImagenet image folder {images_dir} does not exist; expected the original "
                                  f"images named as in the CSVs (e.g. {example}).")
    missing = [name for rows in splits.values() for name, _ in rows if not (images_dir / name).is_file()]
    if missing:
        raise SourceNotFoundError(f"{len(missing)} images listed in the CSVs are missing from {images_dir}, "
                                  f"e.g. {', '.join(missing[:3])}.")
    with _staging_folder(out, log) as staging:
        jobs = []
        for split, rows in splits.items():
            for name, label in rows:
                folder = staging / split / label
                folder.mkdir(parents=True, exist_ok=True)
                jobs.append((str(images_dir / name), str(folder / name), size))
        progress = _Progress(f"Resizing to {size}x{size}", len(jobs), log, every=1000)
        _run_jobs(_resize_miniimagenet_file, jobs, workers, progress)
        counts = {split: len(rows) for split, rows in splits.items()}
        classes = {split: len({label for _, label in rows}) for split, rows in splits.items()}
        _write_marker(staging, options, num_images=len(jobs), num_images_per_split=counts,
                      num_classes_per_split=classes, csv_dir=str(csv_dir), images_dir=str(images_dir))
    log(f"Wrote {len(jobs)} images to {out} ({', '.join(f'{s}: {classes[s]} classes' for s in classes)})")
    return out
