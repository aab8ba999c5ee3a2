"""Tests of the image task pipelines (`maml_tf/data/images.py`, `omniglot.py`, `miniimagenet.py`).

The protocol is checked against the task plans (which images, labels and
rotations a task uses): shot-major layout, one-hot labels with every class once
per shot position, N distinct classes and K+Q distinct images per class, one
rotation per class, pixels = rot90 of the stored image, / 255, inverted for
Omniglot. Data: a synthetic tree of 1623 random 28x28 characters, synthetic
MiniImagenet JPEGs, and `../shared/data/tfds` (skipped when missing).
"""

import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from maml_tf.algorithms.base import TaskBatch
from maml_tf.config import Config
from maml_tf.data import images, miniimagenet, omniglot, prepare
from maml_tf.data.images import DataNotFoundError, ImageTasks, make_image_tasks

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
IMAGES_PER_CHARACTER = 4


def shared(*parts) -> Path:
    """A file under ../shared, or skip the test when it is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is missing (../shared is not beside the repository)")
    return path


@pytest.fixture(scope="module")
def omniglot_dir(tmp_path_factory) -> Path:
    """data_dir with omniglot_resized/: 50 alphabets, 1623 characters of 4 random 28x28 PNGs."""
    data_dir = tmp_path_factory.mktemp("data")
    root = data_dir / "omniglot_resized"
    rng = np.random.default_rng(0)
    names = [(f"Alphabet{a:02d}", f"character{c:02d}") for a in range(50) for c in range(1, 34)][:1623]
    rng.shuffle(names)  # Created out of order: the listing must not depend on it.
    for alphabet, character in names:
        folder = root / alphabet / character
        folder.mkdir(parents=True)
        for i in range(IMAGES_PER_CHARACTER):
            pixels = rng.integers(0, 256, (28, 28), dtype=np.uint8)
            Image.fromarray(pixels, "L").save(folder / f"{i:04d}_{i + 1:02d}.png")
    return data_dir


def omniglot_config(data_dir, **kw) -> Config:
    kw = {"num_classes": 5, "update_batch_size": 2, **kw}
    return Config(datasource="omniglot", data_dir=str(data_dir), **kw)


# ---------------------------------------------------------------- the split
def test_split_is_the_original_seed_1_shuffle():
    state = random.getstate()
    try:
        original = list(range(1623))
        random.seed(1)
        random.shuffle(original)
    finally:
        random.setstate(state)
    splits = {s: omniglot.split_indices(1623, s).tolist() for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [1100, 100, 423]
    assert splits["train"] + splits["val"] + splits["test"] == original
    assert random.getstate() == state  # The global random state is left alone.


def test_omniglot_folder_split_sizes_and_determinism(omniglot_dir):
    config = omniglot_config(omniglot_dir)
    listed = omniglot.list_character_folders(omniglot_dir / "omniglot_resized")
    assert listed == sorted(listed) and len(listed) == 1623
    names = {}
    for split, size in (("train", 1100), ("val", 100), ("test", 423)):
        tasks = make_image_tasks(config, split, seed=0)
        assert tasks.classes.num_classes == size
        assert tasks.classes.images.shape == (size * IMAGES_PER_CHARACTER, 28, 28, 1)
        assert list(tasks.classes.names) == [listed[i] for i in omniglot.split_indices(1623, split)]
        names[split] = tasks.classes.names
    assert len(set(names["train"]) | set(names["val"]) | set(names["test"])) == 1623
    again = make_image_tasks(config, "val", seed=0)  # From the cache now.
    assert again.classes.names == names["val"]
    assert (omniglot_dir / "omniglot_resized" / images.CACHE_NAME).is_file()


def test_cache_is_used_and_invalidated(omniglot_dir, tmp_path, monkeypatch):
    root = tmp_path / "omniglot_resized"
    for character in ("A/character01", "A/character02", "B/character01"):
        (root / character).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((28, 28), i, np.uint8), "L").save(root / character / f"{i}.png")
    first = omniglot.load_omniglot_folder(root)
    assert (root / images.CACHE_NAME).is_file()
    monkeypatch.setattr(images, "decode_image_files", lambda *a: pytest.fail("decoded despite the cache"))
    cached = omniglot.load_omniglot_folder(root)
    np.testing.assert_array_equal(cached.images, first.images)
    monkeypatch.undo()
    Image.fromarray(np.full((28, 28), 9, np.uint8), "L").save(root / "B/character01/3.png")  # A new image.
    changed = omniglot.load_omniglot_folder(root)
    assert changed.counts().tolist() == [3, 3, 4] and changed.class_images(2)[3].max() == 9


def test_wrong_image_size_names_the_file(tmp_path):
    folder = tmp_path / "omniglot_resized" / "A" / "character01"
    folder.mkdir(parents=True)
    Image.new("L", (105, 105)).save(folder / "big.png")
    with pytest.raises(ValueError, match="big.png"):
        omniglot.load_omniglot_folder(tmp_path / "omniglot_resized", cache=False)


# -------------------------------------------------------------- task layout
def check_task(tasks: ImageTasks, batch: TaskBatch, t: int, task_number: int):
    """Checks task `t` of a float batch against the plan of task `task_number`."""
    n, k, q = tasks.num_ways, tasks.num_support, tasks.num_query
    plan = tasks.task_plan(task_number)
    index, labels, rotations = (x.numpy() for x in plan)
    x = np.concatenate([batch.support_x[t], batch.query_x[t]])  # [(K+Q)*N, H, W, C]
    y = np.concatenate([batch.support_y[t], batch.query_y[t]])  # [(K+Q)*N, N]
    # One-hot labels, equal to the plan's; every class once per shot position (shot-major).
    np.testing.assert_array_equal(y, np.eye(n, dtype=np.float32)[labels])
    for s in range(k + q):
        assert sorted(labels[s * n:(s + 1) * n]) == list(range(n))
    # N distinct classes; each label one class, its K+Q images distinct; one rotation per class.
    owner = np.searchsorted(tasks.classes.offsets, index, side="right") - 1
    classes_of_label = {}
    for label in range(n):
        mine = labels == label
        assert len(set(owner[mine])) == 1 and len(set(index[mine])) == k + q
        assert len(set(rotations[mine])) == 1
        classes_of_label[label] = owner[mine][0]
    assert len(set(classes_of_label.values())) == n
    # Pixels: rot90 of the stored image, / 255 (inverted for Omniglot).
    for e in range(len(index)):
        stored = np.rot90(tasks.classes.images[index[e]], rotations[e], axes=(0, 1)).astype(np.float32) / 255.0
        expected = 1.0 - stored if tasks.invert else stored
        np.testing.assert_array_equal(x[e], expected)
    return rotations


def test_omniglot_task_batch_layout_and_rotations(omniglot_dir):
    config = omniglot_config(omniglot_dir, num_classes=5, update_batch_size=2)
    tasks = make_image_tasks(config, "train", seed=3)
    batch = next(tasks.batches(3))
    assert isinstance(batch, TaskBatch)
    assert batch.support_x.shape == (3, 10, 28, 28, 1) and batch.support_y.shape == (3, 10, 5)
    assert batch.query_x.shape == (3, 10, 28, 28, 1) and batch.query_y.shape == (3, 10, 5)
    assert all(v.dtype == tf.float32 for v in batch)
    seen = set()
    for t in range(3):
        seen |= set(check_task(tasks, batch, t, t).tolist())
    for t in range(3, 12):  # Rotations are drawn from {0, 1, 2, 3}.
        seen |= set(tasks.task_plan(t).rotations.numpy().tolist())
    assert seen == {0, 1, 2, 3}


def test_omniglot_20_way_1_shot(omniglot_dir):
    tasks = make_image_tasks(omniglot_config(omniglot_dir, num_classes=20, update_batch_size=1), "val", seed=0)
    batch = next(tasks.batches(2))
    assert batch.support_x.shape == (2, 20, 28, 28, 1) and batch.query_y.shape == (2, 20, 20)
    check_task(tasks, batch, 1, 1)


def test_task_stream_is_reproducible(omniglot_dir):
    config = omniglot_config(omniglot_dir)
    a = next(make_image_tasks(config, "train", seed=7).batches(2))
    tasks = make_image_tasks(config, "train", seed=7)
    b = next(tasks.batches(2))
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    singles = list(tasks.batches(1, 2))  # Task i does not depend on the meta-batch size.
    assert len(singles) == 2
    for t in range(2):
        for u, v in zip(singles[t], b):
            np.testing.assert_array_equal(u[0], v[t])
    other = next(make_image_tasks(config, "train", seed=8).batches(2))
    assert not np.array_equal(other.support_x, a.support_x)
    assert len(list(tasks.batches(4, 3))) == 3  # Finite when asked.


def test_too_many_ways_is_an_error(omniglot_dir, tmp_path):
    with pytest.raises(ValueError, match="fewer than the 101"):
        make_image_tasks(omniglot_config(omniglot_dir, num_classes=101), "val", seed=0)
    with pytest.raises(ValueError, match="a task needs 6"):
        make_image_tasks(omniglot_config(omniglot_dir, update_batch_size=3), "val", seed=0)
    with pytest.raises(ValueError, match="split"):
        make_image_tasks(omniglot_config(omniglot_dir), "validation", seed=0)


def test_missing_data_folders_name_the_command(tmp_path):
    with pytest.raises(DataNotFoundError, match="data/prepare_omniglot.py") as error:
        make_image_tasks(omniglot_config(tmp_path), "train", seed=0)
    assert isinstance(error.value, FileNotFoundError) and "omniglot_resized" in str(error.value)
    config = Config(datasource="miniimagenet", data_dir=str(tmp_path), max_pool=True)
    with pytest.raises(DataNotFoundError, match="data/prepare_miniimagenet.py"):
        make_image_tasks(config, "val", seed=0)


# ---------------------------------------------------------------------- TFDS
@pytest.fixture(scope="module")
def tfds_dir() -> Path:
    return shared("data", "tfds", "omniglot", "3.0.0", "dataset_info.json").parents[2]


def test_tfds_images_equal_the_prepared_folder(tfds_dir, tmp_path):
    small1 = shared("data", "omniglot", "images_background_small1.zip")
    folder = omniglot.load_omniglot_folder(
        prepare.prepare_omniglot([small1], tmp_path / "omniglot_resized", max_characters=6, log=lambda _: None))
    from_tfds = omniglot.load_omniglot_tfds(str(tfds_dir), download=False, splits=("small1",))
    assert from_tfds.num_classes == 136 and list(from_tfds.names[:6]) == list(folder.names)
    for c in range(6):  # The same pixels (the order of drawers within a character may differ).
        a, b = from_tfds.class_images(c), folder.class_images(c)
        assert sorted(x.tobytes() for x in a) == sorted(x.tobytes() for x in b)


def test_tfds_source_gives_the_folder_split(tfds_dir, tmp_path):
    background = shared("data", "omniglot", "images_background.zip")
    evaluation = shared("data", "omniglot", "images_evaluation.zip")
    released = set()
    for archive in (background, evaluation):
        with zipfile.ZipFile(archive) as z:
            released |= {"/".join(n.split("/")[1:3]) for n in z.namelist() if n.endswith(".png")}
    listed = sorted(released, key=lambda name: tuple(name.split("/")))
    config = omniglot_config(tmp_path, omniglot_source="tfds", tfds_data_dir=str(tfds_dir))
    tasks = make_image_tasks(config, "val", seed=0, tfds_download=False)
    assert list(tasks.classes.names) == [listed[i] for i in omniglot.split_indices(1623, "val")]
    assert tasks.classes.images.shape == (100 * 20, 28, 28, 1)
    batch = next(tasks.batches(2))
    assert batch.support_x.shape == (2, 10, 28, 28, 1)
    check_task(tasks, batch, 0, 0)
    train = make_image_tasks(config, "train", seed=0, tfds_download=False)  # Memoised load.
    assert train.classes.num_classes == 1100


def test_tfds_cache_is_used_and_keyed_by_the_splits(tfds_dir, tmp_path, monkeypatch):
    load = omniglot.load_omniglot_tfds.__wrapped__  # Past the in-process memo.
    first = load(str(tfds_dir), download=False, splits=("small1",), cache_dir=str(tmp_path))
    assert (tmp_path / omniglot.TFDS_CACHE_NAME).is_file()
    with monkeypatch.context() as m:
        m.setattr(omniglot, "resize_like_preparation", lambda *a: pytest.fail("decoded despite the cache"))
        cached = load(str(tfds_dir), download=False, splits=("small1",), cache_dir=str(tmp_path))
    np.testing.assert_array_equal(cached.images, first.images)
    np.testing.assert_array_equal(cached.offsets, first.offsets)
    assert cached.names == first.names
    other = load(str(tfds_dir), download=False, splits=("small2",), cache_dir=str(tmp_path))  # Decoded anew.
    assert other.names != first.names


def test_tfds_not_prepared_without_download(tmp_path):
    config = omniglot_config("unused", omniglot_source="tfds", tfds_data_dir=str(tmp_path))
    with pytest.raises(DataNotFoundError, match="tensorflow-datasets"):
        make_image_tasks(config, "train", seed=0, tfds_download=False)


# -------------------------------------------------------------- MiniImagenet
def test_miniimagenet_training_tasks_have_15_queries(miniimagenet_dir):
    config = Config(datasource="miniimagenet", data_dir=str(miniimagenet_dir), num_classes=5,
                    update_batch_size=1, max_pool=True, train=True)
    tasks = make_image_tasks(config, "train", seed=0)
    assert tasks.classes.num_classes == 5 and tasks.classes.images.shape == (80, 84, 84, 3)
    assert list(tasks.classes.names) == sorted(tasks.classes.names)
    batch = next(tasks.batches(2))
    assert batch.support_x.shape == (2, 5, 84, 84, 3) and batch.support_y.shape == (2, 5, 5)
    assert batch.query_x.shape == (2, 75, 84, 84, 3) and batch.query_y.shape == (2, 75, 5)
    rotations = check_task(tasks, batch, 1, 1)  # Not inverted.
    assert not tasks.rotate and set(rotations.tolist()) == {0}


def test_miniimagenet_evaluation_splits(miniimagenet_dir):
    config = Config(datasource="miniimagenet", data_dir=str(miniimagenet_dir), num_classes=5,
                    update_batch_size=1, max_pool=True, train=False)
    val = make_image_tasks(config, images.evaluation_split(config), seed=0)
    config.test_set = True
    test = make_image_tasks(config, images.evaluation_split(config), seed=0)
    assert (val.classes.num_classes, test.classes.num_classes) == (5, 6)
    assert not set(val.classes.names) & set(test.classes.names)
    batch = next(test.batches(1, 1))
    assert batch.support_x.shape == (1, 5, 84, 84, 3) and batch.query_x.shape == (1, 5, 84, 84, 3)
    check_task(test, batch, 0, 0)
    assert miniimagenet.list_class_folders(miniimagenet_dir / "miniImagenet" / "test") == list(test.classes.names)
