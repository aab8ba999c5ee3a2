"""Omniglot tasks: 1623 characters, the original's 1100/100/423 split, rotated classes.

Two sources of the same images:

* `omniglot_source='folder'` (default, the original's): the character folders
  of `config.data_dir/omniglot_resized` (`<alphabet>/<character>/*.png`, 28x28),
  written by `python data/prepare_omniglot.py`.
* `omniglot_source='tfds'`: the tensorflow-datasets `omniglot` builder (splits
  train + test = images_background + images_evaluation, 105x105), resized here
  to 28x28 exactly as the preparation does (8-bit greyscale, PIL LANCZOS).

Split (the original `DataGenerator`): the 1623 characters in sorted order are
shuffled with `random.seed(1); random.shuffle(...)`; the first 1100 are
meta-train, the next 100 meta-validation, the rest (423) meta-test.
Deliberate difference: the original shuffled the order of `os.listdir`, which
depends on the file system; the port sorts first (by alphabet, then
character), so the split is the same on every machine.
"""

from __future__ import annotations

import functools
import logging
import random
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from maml_tf.data.images import (ClassImages, DataNotFoundError, ImageTasks, fingerprint_files, from_class_lists,
                                 load_class_folders, read_cache, write_cache)

FOLDER_NAME = "omniglot_resized"
IMAGE_SHAPE = (28, 28, 1)
NUM_CHARACTERS = 1623
NUM_TRAIN = 1100  # The original: num_train = 1200 - num_val.
NUM_VAL = 100
SPLIT_SEED = 1
TFDS_SPLITS = ("train", "test")  # images_background, images_evaluation.
TFDS_CACHE_NAME = ".maml_tf_tfds_omniglot.npz"  # In `config.data_dir`.


def split_indices(num_characters: int, split: str) -> np.ndarray:
    """Which characters (positions in the sorted list) belong to a split.

    Args:
      num_characters: length of the sorted character list (1623).
      split: 'train' (first 1100 after the shuffle), 'val' (next 100) or
        'test' (the rest).

    Returns:
      Indices into the sorted list, in shuffled order.
    """
    order = list(range(num_characters))
    # `random.Random(1).shuffle` is `random.seed(1); random.shuffle` of the original, without
    # touching the global random state. The permutation depends only on the list length.
    random.Random(SPLIT_SEED).shuffle(order)
    bounds = {"train": (0, NUM_TRAIN), "val": (NUM_TRAIN, NUM_TRAIN + NUM_VAL),
              "test": (NUM_TRAIN + NUM_VAL, num_characters)}
    if split not in bounds:
        raise ValueError(f"split must be one of {', '.join(bounds)}; got {split!r}.")
    start, stop = bounds[split]
    return np.asarray(order[start:stop], dtype=np.int64)


def missing_folder_message(root: Path) -> str:
    return (f"Omniglot folder {root} not found (expected <alphabet>/<character>/*.png, 28x28). Create it with\n"
            f"  python data/prepare_omniglot.py --source DIR --out {root}\n"
            f"where DIR holds images_background.zip and images_evaluation.zip of "
            f"github.com/brendenlake/omniglot, or use --omniglot_source=tfds.")


def list_character_folders(root: Path) -> List[str]:
    """The character folders `<alphabet>/<character>` under `root`, sorted by (alphabet, character).

    Raises:
      DataNotFoundError: `root` is missing or holds no character folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataNotFoundError(missing_folder_message(root))
    folders = sorted((alphabet.name, character.name)
                     for alphabet in root.iterdir() if alphabet.is_dir() and not alphabet.name.startswith(".")
                     for character in alphabet.iterdir() if character.is_dir())
    if not folders:
        raise DataNotFoundError(missing_folder_message(root) + f" ({root} holds no character folder.)")
    return [f"{alphabet}/{character}" for alphabet, character in folders]


def load_omniglot_folder(root: Path, cache: bool = True) -> ClassImages:
    """All characters of a prepared folder, in sorted order.

    Args:
      root: `omniglot_resized` (`<alphabet>/<character>/*.png`, 28x28).
      cache: keep the decoded array in `root/.maml_tf_decoded.npz`.

    Returns:
      The characters' images, [num_images, 28, 28, 1] uint8 (strokes dark, as stored).
    """
    return load_class_folders(root, list_character_folders(root), IMAGE_SHAPE, (".png",), cache=cache)


def resize_like_preparation(image: np.ndarray, size: int = IMAGE_SHAPE[0]) -> np.ndarray:
    """A 105x105 uint8 release image -> [size, size, 1], as `prepare.resize_omniglot_image`.

    Args:
      image: [105, 105] or [105, 105, C] uint8 with 0/255 pixels (TFDS stores
        RGB copies of the 1-bit release images; they are grey, R == G == B).

    Returns:
      [size, size, 1] uint8: 8-bit greyscale, PIL LANCZOS.
    """
    from PIL import Image

    grey = image[..., 0] if image.ndim == 3 else image
    resized = Image.fromarray(np.ascontiguousarray(grey), mode="L").resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(resized)[..., None]


@functools.lru_cache(maxsize=2)
def load_omniglot_tfds(data_dir: Optional[str] = None, *, download: bool = True,
                       splits: Sequence[str] = TFDS_SPLITS, cache_dir: Optional[str] = None) -> ClassImages:
    """The characters of the tensorflow-datasets `omniglot` builder, resized to 28x28.

    Characters are keyed `<alphabet>/character<NN>` (NN = alphabet_char_id + 1,
    two digits) and sorted like the folders of the release, so the character
    list, and with it the split, equals the folder source's. Within a
    character the images keep the order of the TFDS records (the release's
    drawer numbers are not stored by TFDS), so a seed draws other drawers than
    from the folder; the distribution is the same. Results are memoised per
    arguments (train and val tasks share one load).

    Args:
      data_dir: tensorflow-datasets data folder (None: its default).
      download: let tensorflow-datasets download and prepare Omniglot if it
        is not in `data_dir`; False requires it prepared.
      splits: TFDS splits to read (train + test: all 1623 characters).
      cache_dir: if given, keep the resized images in
        `cache_dir/.maml_tf_tfds_omniglot.npz` (decoding and resizing all
        32,460 images takes seconds at every start otherwise), valid while the prepared TFDS files
        and `splits` stay the same (names, sizes and modification times are
        checked). An unwritable `cache_dir` only skips writing it.

    Returns:
      The characters' images, [num_images, 28, 28, 1] uint8 (strokes dark).
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    try:
        dataset, info = tfds.load("omniglot", split="+".join(splits), data_dir=data_dir, download=download,
                                  with_info=True, shuffle_files=False)
    except (AssertionError, tfds.core.registered.DatasetNotFoundError, FileNotFoundError) as e:
        raise DataNotFoundError(
            f"tensorflow-datasets 'omniglot' is not prepared in {data_dir or 'the default data folder'} ({e}). "
            f"Allow the download, point --tfds_data_dir at a prepared copy, or use the folder source "
            f"(python data/prepare_omniglot.py).") from None
    cache_path = Path(cache_dir) / TFDS_CACHE_NAME if cache_dir is not None else None
    if cache_path is not None:
        version_dir = Path(info.data_dir)
        fingerprint = fingerprint_files(sorted(p for p in version_dir.iterdir() if p.is_file()), version_dir,
                                        extra=f"tfds {version_dir.resolve()} {'+'.join(splits)} {IMAGE_SHAPE}")
        cached = read_cache(cache_path, fingerprint)
        if cached is not None:
            return cached
    alphabet_names = info.features["alphabet"].names
    dataset = dataset.map(lambda ex: (ex["image"][..., 0], ex["alphabet"], ex["alphabet_char_id"]),
                          num_parallel_calls=tf.data.AUTOTUNE).batch(1024).prefetch(2)
    per_character = {}
    for images, alphabets, char_ids in dataset.as_numpy_iterator():
        for image, alphabet, char_id in zip(images, alphabets, char_ids):
            key = (alphabet_names[alphabet], f"character{char_id + 1:02d}")
            per_character.setdefault(key, []).append(resize_like_preparation(image))
    keys = sorted(per_character)
    result = from_class_lists([np.stack(per_character[k]) for k in keys], [f"{a}/{c}" for a, c in keys])
    if cache_path is not None:
        write_cache(cache_path, result, fingerprint)
    return result


def load_omniglot(config, *, tfds_download: bool = True, cache: bool = True) -> ClassImages:
    """All characters from the source chosen by `config.omniglot_source`."""
    if config.omniglot_source == "folder":
        return load_omniglot_folder(Path(config.data_dir) / FOLDER_NAME, cache=cache)
    if config.omniglot_source == "tfds":
        return load_omniglot_tfds(config.tfds_data_dir, download=tfds_download,
                                  cache_dir=config.data_dir if cache else None)
    raise ValueError(f"omniglot_source must be 'folder' or 'tfds'; got {config.omniglot_source!r}.")


def omniglot_tasks(config, split: str, seed: Optional[int], *, tfds_download: bool = True,
                   cache: bool = True) -> ImageTasks:
    """Omniglot tasks of one split: N-way, K support and `num_query_per_class` query images per class.

    Args:
      config: a `Config` (see `make_image_tasks`).
      split: 'train', 'val' or 'test'.
      seed: seed of the task stream.
      tfds_download: see `load_omniglot_tfds`.
      cache: keep the decoded images (see `load_omniglot_folder`; with
        `omniglot_source='tfds'`, the `cache_dir` of `load_omniglot_tfds`).

    Returns:
      An `ImageTasks` with rotations and inversion on.
    """
    characters = load_omniglot(config, tfds_download=tfds_download, cache=cache)
    if characters.num_classes != NUM_CHARACTERS:
        logging.getLogger(__name__).warning(
            "Omniglot has %d characters here, not %d: the split differs from the original's.",
            characters.num_classes, NUM_CHARACTERS)
    chosen = characters.select(split_indices(characters.num_classes, split))
    return ImageTasks(chosen, num_ways=config.num_classes, num_support=config.support_per_class(split),
                      num_query=config.num_query_per_class, seed=seed, rotate=True, invert=True,
                      name=f"Omniglot {split}")
