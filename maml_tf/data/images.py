"""N-way K-shot image classification tasks (Omniglot, MiniImagenet) as a `tf.data` pipeline.

The images of a split are decoded once into one uint8 array held in memory;
tasks are sampled on the fly inside TensorFlow (stateless random ops keyed by
the seed and the task's number), converted to float32 and prefetched.
The task protocol is the original
`DataGenerator.make_data_tensor` (cbfinn/maml, `data_generator.py`):

* N classes sampled without replacement; a class's label is its index in the
  sampled list (0..N-1), one-hot.
* K + Q images ("drawers") per class sampled without replacement: the first K
  of each class are the support set, the other Q the query set.
* Shot-major layout: example `s * N + j` is shot position `s` of the class at
  slot `j`, and the classes appear in a fresh random order within every shot
  position (the original shuffles `class_idxs` per shot). The support set is
  the first `K * N` examples, the query set the rest.
* Omniglot: each class gets one rotation `rot90(k)`, k uniform in {0,1,2,3},
  applied to all its images (training and evaluation alike); pixels / 255,
  inverted (1 - x) so strokes are 1. MiniImagenet: pixels / 255, no rotation.

Deliberate differences from the original:

* The original pre-generates 200,000 training (600 evaluation) tasks as file
  lists with Python's `random` (seeds 5 and 6) and cycles through them (with
  fresh rotations and class orders on every pass). The port draws task number
  `i` from the key `(seed, i)` with TensorFlow's stateless random ops: the
  distribution of tasks is the same, the individual random tasks are not the
  original's, and training never repeats a task list.
* Task `i` of a seed is the same whatever the meta-batch size, and every new
  iteration of `ImageTasks.dataset()` starts again at task 0.

The per-datasource loading (folders, splits) lives in `omniglot.py` and
`miniimagenet.py`; `make_image_tasks` dispatches on `config.datasource`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from maml_tf.data.errors import DataError
from maml_tf.types import TaskBatch

SPLITS = ("train", "val", "test")
CACHE_NAME = ".maml_tf_decoded.npz"  # Inside the data folder, so ignored by git with it.
CACHE_VERSION = 1

_log = logging.getLogger(__name__)


class DataNotFoundError(FileNotFoundError):
    """The prepared data folder is missing; the message says which command creates it."""


# =========================================================================
# Images of a split, in memory
# =========================================================================

class ClassImages(NamedTuple):
    """The images of some classes, as one uint8 array.

    images: [num_images, H, W, C] uint8; class `c` owns
      `images[offsets[c]:offsets[c + 1]]`.
    offsets: [num_classes + 1] int64, increasing, offsets[0] == 0.
    names: the class names (e.g. `Greek/character03`), in class order.
    """

    images: np.ndarray
    offsets: np.ndarray
    names: Tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def counts(self) -> np.ndarray:
        """[num_classes] number of images of each class."""
        return np.diff(self.offsets)

    def class_images(self, c: int) -> np.ndarray:
        """[count, H, W, C] the images of class `c` (a view)."""
        return self.images[self.offsets[c]:self.offsets[c + 1]]

    def select(self, classes: Sequence[int]) -> "ClassImages":
        """The given classes, in the given order (a copy)."""
        classes = list(classes)
        counts = self.counts()[classes] if classes else np.zeros([0], np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        images = (np.concatenate([self.class_images(c) for c in classes]) if classes
                  else self.images[:0].copy())
        return ClassImages(images, offsets, tuple(self.names[c] for c in classes))


def from_class_lists(per_class: Sequence[np.ndarray], names: Sequence[str]) -> ClassImages:
    """Builds `ClassImages` from one `[count, H, W, C]` uint8 array per class."""
    counts = [len(x) for x in per_class]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return ClassImages(np.concatenate(per_class).astype(np.uint8), offsets, tuple(names))


def decode_image_files(paths: Sequence[str], image_shape: Tuple[int, int, int]) -> np.ndarray:
    """Decodes image files into one uint8 array.

    PNGs (lossless, any decoder gives the same pixels) are decoded with
    Pillow, about twice as fast as tf.data for small images; JPEGs with
    TensorFlow's `decode_jpeg` in parallel, the original's decoder (JPEG
    decoders may differ by rounding).

    Args:
      paths: image files.
      image_shape: (H, W, C) every image must have; C sets the decoded
        channels (1: greyscale, 3: RGB).

    Returns:
      [len(paths), H, W, C] uint8.

    Raises:
      ValueError: an image has another shape (the message names it).
    """
    paths = [str(p) for p in paths]
    if all(p.lower().endswith(".png") for p in paths):
        return _decode_with_pillow(paths, image_shape)
    return _decode_with_tensorflow(paths, image_shape)


def _wrong_shape(path, shape, image_shape) -> DataError:
    return DataError(f"Image {path} has shape {tuple(shape)}; expected {tuple(image_shape)} for every image. "
                      f"Prepare the data again with data/prepare_*.py.")


def _decode_with_pillow(paths: Sequence[str], image_shape: Tuple[int, int, int]) -> np.ndarray:
    from PIL import Image

    mode = {1: "L", 3: "RGB"}[image_shape[-1]]
    out = np.empty((len(paths),) + tuple(image_shape), np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                # Mode '1' (the original's binary PNGs) becomes 0/255, as TensorFlow's decode_png.
                pixels = np.asarray(image if image.mode == mode else image.convert(mode))
        except (OSError, ValueError, SyntaxError) as e:  # Truncated, empty or not an image (Pillow's errors).
            raise DataError(f"Cannot read image {path} ({e}). Replace the file, or prepare the data again with "
                            "data/prepare_*.py.") from None
        pixels = pixels.reshape(pixels.shape[:2] + (image_shape[-1],))
        if pixels.shape != tuple(image_shape):
            raise _wrong_shape(path, pixels.shape, image_shape)
        out[i] = pixels
    return out


def _decode_with_tensorflow(paths: Sequence[str], image_shape: Tuple[int, int, int]) -> np.ndarray:
    if not paths:
        return np.zeros((0,) + tuple(image_shape), np.uint8)
    expected = tf.constant(image_shape, tf.int32)

    def decode(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=image_shape[-1], expand_animations=False)
        tf.debugging.Assert(tf.reduce_all(tf.equal(tf.shape(image), expected)),
                            ["image", path, "has shape", tf.shape(image)])
        return tf.ensure_shape(image, image_shape)

    dataset = (tf.data.Dataset.from_tensor_slices(paths)
               .map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .batch(1024).prefetch(2))
    try:
        return np.concatenate([batch.numpy() for batch in dataset])
    except tf.errors.OpError as e:  # A wrong shape (the Assert names the file), or an undecodable file.
        raise DataError(f"{e.message.strip().splitlines()[0]}; expected {tuple(image_shape)} images. Replace the "
                        f"file, or prepare the data again with data/prepare_*.py.") from None


def fingerprint_files(files: Sequence[Path], root: Path, extra: str = "") -> str:
    """Changes when a file is added, removed, renamed, resized or rewritten (or `extra` changes)."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}{extra}".encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def load_class_folders(root: os.PathLike, class_dirs: Sequence[str], image_shape: Tuple[int, int, int],
                       extensions: Sequence[str], cache: bool = True) -> ClassImages:
    """Decodes the images of class folders, or reuses a cache of them.

    Args:
      root: the data folder; `class_dirs` are relative to it.
      class_dirs: one folder per class, in class order; the images of a
        folder are its files with one of `extensions`, sorted by name.
      image_shape: (H, W, C) of every image.
      extensions: lower-case file suffixes, e.g. ('.png',).
      cache: read and write `root/.maml_tf_decoded.npz`, valid while no
        image file changes (names, sizes and modification times are checked).
        A read-only `root` only skips writing it.

    Returns:
      The classes' images.
    """
    root = Path(root)
    files_per_class: List[List[Path]] = []
    for name in class_dirs:
        folder = root / name
        files_per_class.append(sorted(p for p in folder.iterdir() if p.suffix.lower() in extensions))
    all_files = [p for files in files_per_class for p in files]
    cache_path = root / CACHE_NAME
    fingerprint = fingerprint_files(all_files, root) if cache else ""
    cached = read_cache(cache_path, fingerprint) if cache else None
    if cached is not None and cached.names == tuple(class_dirs):
        return cached
    images = decode_image_files([str(p) for p in all_files], image_shape)
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in files_per_class])]).astype(np.int64)
    result = ClassImages(images, offsets, tuple(class_dirs))
    if cache:
        write_cache(cache_path, result, fingerprint)
    return result


def read_cache(path: Path, fingerprint: str) -> Optional[ClassImages]:
    """The images of a cache written by `write_cache` with this fingerprint; None if absent or stale."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as cached:
            if str(cached["fingerprint"]) == fingerprint:
                return ClassImages(cached["images"], cached["offsets"], tuple(str(n) for n in cached["names"]))
    except (OSError, ValueError, KeyError) as e:
        _log.warning("Ignoring the unreadable cache %s (%s).", path, e)
    return None


def write_cache(path: Path, data: ClassImages, fingerprint: str) -> None:
    """Writes the cache atomically (temporary file, then rename); skips on OSError."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, images=data.images, offsets=data.offsets, names=np.array(data.names, dtype=str),
                         fingerprint=np.array(fingerprint))
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        _log.warning("Could not write the decoded-image cache %s (%s); images will be decoded again next time.",
                     path, e)


# =========================================================================
# Task sampling
# =========================================================================

class TaskPlan(NamedTuple):
    """One task as indices, in the original's shot-major layout; every field [(K+Q) * N] int32.

    Example `s * N + j` is shot position `s` of the class in slot `j` of that shot.
    image_indices: rows of `ClassImages.images`.
    labels: the class's index in the task's sampled class list (0..N-1).
    rotations: rot90 count of the example's class (0 unless rotations are on).
    """

    image_indices: tf.Tensor
    labels: tf.Tensor
    rotations: tf.Tensor


class ImageTasks:
    """N-way classification tasks over the classes of one split.

    Task number `i` of a seed is drawn with stateless random ops from the
    key `(seed, i)`, entirely inside TensorFlow (no Python callback, so a
    pipeline left running never blocks the interpreter's exit, and sampling
    runs in tf.data's threads).

    Args:
      classes: the split's images (uint8), see `ClassImages`.
      num_ways: N, classes per task (`--num_classes`).
      num_support: K, support images per class (`--update_batch_size`).
      num_query: query images per class (K, or 15 for MiniImagenet training).
      seed: seed of the task stream (None: drawn from the operating system).
      rotate: give each class of a task one random rot90 (Omniglot).
      invert: 1 - x after scaling to [0, 1] (Omniglot: strokes become 1).
      name: names the split in messages.

    Attributes:
      classes: the split's `ClassImages`; its `images` is a read-only numpy
        view of the tensor the pipeline gathers from.

    Raises:
      ValueError: the split has fewer than N classes, or a class has fewer
        than K + Q images.
    """

    def __init__(self, classes: ClassImages, *, num_ways: int, num_support: int, num_query: int,
                 seed: Optional[int], rotate: bool = False, invert: bool = False, name: str = "images"):
        if num_ways < 1 or num_support < 1 or num_query < 0:
            raise ValueError(f"Need num_ways >= 1, num_support >= 1, num_query >= 0; "
                             f"got {num_ways}, {num_support}, {num_query}.")
        if classes.num_classes < num_ways:
            raise DataError(f"{name} has {classes.num_classes} classes, fewer than the {num_ways} of a task "
                             f"(--num_classes).")
        per_class = num_support + num_query
        counts = classes.counts()
        if counts.min() < per_class:
            c = int(np.argmin(counts))
            raise DataError(f"Class folder {classes.names[c]!r} of {name} has {counts[c]} images; a task needs "
                            f"{per_class} per class ({num_support} support + {num_query} query). Add images, or "
                            "lower --update_batch_size.")
        if rotate and classes.images.shape[1] != classes.images.shape[2]:
            raise ValueError("Rotations need square images.")
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (2 ** 63))
        self.num_ways, self.num_support, self.num_query = num_ways, num_support, num_query
        self.seed, self.rotate, self.invert, self.name = int(seed), rotate, invert, name
        with tf.init_scope(), tf.device("/CPU:0"):  # Eager host tensors, captured by the tf.data functions.
            self._images = tf.convert_to_tensor(classes.images)  # uint8 images, or any other examples.
            self._offsets = tf.constant(classes.offsets[:-1], tf.int32)
            self._counts = tf.constant(classes.counts(), tf.int32)
        # A read-only numpy view of the tensor's memory, so the images are held once (0.8 GB for
        # MiniImagenet train) once the caller drops its array.
        self.classes = classes._replace(images=np.asarray(self._images))

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        return tuple(self.classes.images.shape[1:])

    @property
    def shots_per_class(self) -> int:
        """K + Q: the shot positions of a task."""
        return self.num_support + self.num_query

    def task_plan(self, task) -> TaskPlan:
        """Draws task number `task` of this seed as indices.

        Args:
          task: the task's number in the stream (int or int64 scalar tensor).

        Returns:
          A `TaskPlan`.
        """
        offsets, counts = self._offsets, self._counts
        n, shots = self.num_ways, self.shots_per_class
        key = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(task, tf.int64)])
        seeds = tf.random.experimental.stateless_split(key, num=4)
        # Sorting float64 uniform keys draws without replacement (ties have probability ~1e-10).
        sampled = tf.argsort(tf.random.stateless_uniform([self.classes.num_classes], seeds[0], dtype=tf.float64))
        sampled = sampled[:n]  # [N]; label j is class sampled[j].
        max_count = int(self.classes.counts().max())
        class_counts = tf.gather(counts, sampled)  # [N]
        keys = tf.random.stateless_uniform([n, max_count], seeds[1], dtype=tf.float64)
        keys = tf.where(tf.range(max_count)[None, :] < class_counts[:, None], keys, 2.0)  # Past the end: last.
        drawers = tf.argsort(keys, axis=1)[:, :shots] + tf.gather(offsets, sampled)[:, None]  # [N, S]
        if self.rotate:
            rotations = tf.random.stateless_uniform([n], seeds[2], minval=0, maxval=4, dtype=tf.int32)  # Per class.
        else:
            rotations = tf.zeros([n], tf.int32)
        # The original shuffles the class order anew for every shot position.
        order = tf.argsort(tf.random.stateless_uniform([shots, n], seeds[3], dtype=tf.float64), axis=1)  # [S, N]
        image_indices = tf.gather(tf.transpose(drawers), order, batch_dims=1)  # [S, N]: drawers[order[s, j], s]
        return TaskPlan(tf.reshape(image_indices, [-1]), tf.reshape(order, [-1]),
                        tf.reshape(tf.gather(rotations, order), [-1]))

    def task_pixels(self, plan: TaskPlan) -> tf.Tensor:
        """The uint8 images of a task plan, rotated: [(K+Q)*N, H, W, C]."""
        images = tf.gather(self._images, plan.image_indices)
        if self.rotate:
            # Counter-clockwise quarter turns, as tf.image.rot90 in the original.
            turned = tf.stack([tf.image.rot90(images, k) for k in range(4)])  # [4, (K+Q)*N, H, W, C]
            images = tf.gather_nd(turned, tf.stack([plan.rotations, tf.range(tf.shape(images)[0])], axis=1))
        return images

    def _to_task_batch(self, images: tf.Tensor, labels: tf.Tensor) -> TaskBatch:
        """uint8 images and int labels of a meta-batch -> float32 `TaskBatch`, with the original's ops.

        Examples that are not uint8 are only cast to float32 (no scaling).
        """
        x = tf.cast(images, tf.float32)
        if images.dtype == tf.uint8:
            x = x / 255.0
        if self.invert:
            x = 1.0 - x
        y = tf.one_hot(labels, self.num_ways, dtype=tf.float32)
        k = self.num_support * self.num_ways
        return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:])

    def dataset(self, meta_batch_size: int, start: int = 0) -> tf.data.Dataset:
        """An endless, prefetched dataset of task meta-batches.

        Element `b` holds tasks `(start + b) * meta_batch_size ...`; every
        iteration of the dataset starts again there, so it is reproducible.

        Args:
          meta_batch_size: tasks per element.
          start: the first batch (a resumed run continues the stream).

        Returns:
          A `tf.data.Dataset` of float32 `TaskBatch(support_x, support_y, query_x, query_y)`:
          `support_x` `[meta_batch, N*K, H, W, C]`, `support_y` `[meta_batch, N*K, N]` (one-hot),
          `query_x` `[meta_batch, N*Q, H, W, C]`, `query_y` `[meta_batch, N*Q, N]`.
        """
        def task(number):
            plan = self.task_plan(number)
            return self.task_pixels(plan), plan.labels

        return (tf.data.Dataset.counter(start=start * meta_batch_size, dtype=tf.int64)
                .map(task, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                .batch(meta_batch_size, drop_remainder=True)
                .map(self._to_task_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                .prefetch(tf.data.AUTOTUNE))

    def batches(self, meta_batch_size: int, num_batches: Optional[int] = None, start: int = 0) -> Iterator[TaskBatch]:
        """Task meta-batches as an iterator (`next()` works); endless unless `num_batches` is given.

        Args:
          meta_batch_size: tasks per batch (1 for the original test protocol).
          num_batches: stop after this many batches (e.g. the 600 test tasks).
          start: the first batch (see `dataset`).

        Returns:
          An iterator of float32 `TaskBatch`es, see `dataset`.
        """
        dataset = self.dataset(meta_batch_size, start)
        if num_batches is not None:
            dataset = dataset.take(num_batches)
        return iter(dataset)

    def __repr__(self) -> str:
        return (f"ImageTasks({self.name}: {self.classes.num_classes} classes, {len(self.classes.images)} images "
                f"{self.image_shape}, {self.num_ways}-way, {self.num_support} support + {self.num_query} query "
                f"per class, rotate={self.rotate}, seed={self.seed})")


# =========================================================================
# Entry point
# =========================================================================

def evaluation_split(config) -> str:
    """The split evaluated in testing and validation: 'test' with `--test_set`, else 'val'."""
    return "test" if config.test_set else "val"


def make_image_tasks(config, split: str, seed: Optional[int], *, tfds_download: bool = True,
                     cache: bool = True) -> ImageTasks:
    """The image tasks of `config.datasource` ('omniglot' or 'miniimagenet') for one split.

    Args:
      config: a `maml_tf.config.Config` (datasource, num_classes,
        update_batch_size, num_query_per_class, data_dir, omniglot_source,
        tfds_data_dir are read).
      split: 'train', 'val' or 'test'.
      seed: seed of the task stream (the original used 5 for training and 6
        for evaluation tasks, 1 at test time).
      tfds_download: with `omniglot_source='tfds'`, let tensorflow-datasets
        download Omniglot when it is not prepared in `tfds_data_dir`.
      cache: keep the decoded images in a `.npz` inside the data folder.

    Returns:
      An `ImageTasks`.

    Raises:
      DataNotFoundError: the data folder is missing (the message gives the
        command that prepares it).
      ValueError: unknown datasource or split, or a task larger than the split.
    """
    from maml_tf.data import DATASOURCES  # The registry names each datasource's builder.

    entry = DATASOURCES.get(config.datasource)
    if entry is None or not entry.classification:
        raise ValueError(f"No image tasks for datasource {config.datasource!r}.")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}.")
    return entry.sampler()(config, split, seed, tfds_download=tfds_download, cache=cache)
