"""MiniImagenet tasks: the Ravi & Larochelle split (64/16/20 classes x 600 images, 84x84).

The class folders of `config.data_dir/miniImagenet/{train,val,test}/<class>/*.jpg`
(written by `python data/prepare_miniimagenet.py`) are listed sorted; split
'train' reads `train/`, 'val' reads `val/` and 'test' reads `test/` (the
original's `--test_set`). No rotations. Training tasks have 15 query images
per class (`Config.num_query_per_class`), as the original.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from maml_tf.data.images import ClassImages, DataNotFoundError, ImageTasks, load_class_folders

FOLDER_NAME = "miniImagenet"
IMAGE_SHAPE = (84, 84, 3)
EXTENSIONS = (".jpg", ".jpeg")


def missing_folder_message(folder: Path) -> str:
    root = folder.parent
    return (f"MiniImagenet folder {folder} not found (expected {root}/{{train,val,test}}/<class>/*.jpg, 84x84). "
            f"Create it with\n"
            f"  python data/prepare_miniimagenet.py --source DIR --out {root}\n"
            f"where DIR holds train.csv, val.csv, test.csv (Ravi & Larochelle) and images/ with the original images.")


def list_class_folders(folder: Path) -> List[str]:
    """The class folders of one split folder, sorted by name.

    Raises:
      DataNotFoundError: the folder is missing or holds no class folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataNotFoundError(missing_folder_message(folder))
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataNotFoundError(missing_folder_message(folder) + f" ({folder} holds no class folder.)")
    return classes


def load_miniimagenet_split(root: Path, split: str, cache: bool = True) -> ClassImages:
    """The images of one split, decoded once.

    Args:
      root: the prepared `miniImagenet` folder.
      split: 'train', 'val' or 'test'.
      cache: keep the decoded array in `root/<split>/.maml_tf_decoded.npz`
        (about 0.8 GB for train).

    Returns:
      The classes' images, [num_images, 84, 84, 3] uint8.
    """
    folder = Path(root) / split
    return load_class_folders(folder, list_class_folders(folder), IMAGE_SHAPE, EXTENSIONS, cache=cache)


def miniimagenet_tasks(config, split: str, seed: Optional[int], *, tfds_download: bool = True,
                       cache: bool = True) -> ImageTasks:
    """MiniImagenet tasks of one split: N-way, K support and `num_query_per_class` query images per class.

    Args:
      config: a `Config` (see `make_image_tasks`).
      split: 'train', 'val' or 'test'.
      seed: seed of the task stream.
      tfds_download: unused (Omniglot only).
      cache: see `load_miniimagenet_split`.

    Returns:
      An `ImageTasks` without rotations or inversion.
    """
    del tfds_download
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test'; got {split!r}.")
    classes = load_miniimagenet_split(Path(config.data_dir) / FOLDER_NAME, split, cache=cache)
    return ImageTasks(classes, num_ways=config.num_classes, num_support=config.support_per_class(split),
                      num_query=config.num_query_per_class, seed=seed, rotate=False, invert=False,
                      name=f"MiniImagenet {split}")
