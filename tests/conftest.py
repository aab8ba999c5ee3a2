"""Shared test helpers: quiet TensorFlow, four logical CPU devices, the repository root and ../shared."""

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Four logical CPU devices, for the tests of tf.distribute (tests/test_distribute.py): they must exist before
# TensorFlow starts its runtime. Everything else runs on the first, as without them.
tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                           [tf.config.LogicalDeviceConfiguration()] * 4)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def shared_path(*parts) -> Path:
    """A file under ../shared, or skip the test when it is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is missing (../shared is not beside the repository)")
    return path


@pytest.fixture(scope="session")
def miniimagenet_dir(tmp_path_factory) -> Path:
    """data_dir with miniImagenet/ prepared from synthetic JPEGs named after the real CSV rows."""
    from test_prepare import write_miniimagenet_source

    from maml_tf.data import prepare

    work = tmp_path_factory.mktemp("mini")
    source = write_miniimagenet_source(work / "src", {"train": (5, 16), "val": (5, 16), "test": (6, 2)})
    prepare.prepare_miniimagenet(source, source / "images", work / "data" / "miniImagenet", workers=1,
                                 log=lambda _: None)
    return work / "data"


def assert_metamodel_fits_saves_and_loads(meta, batches, tmp_path) -> None:
    """`meta` (a compiled `MetaModel`) fits one epoch of `batches` (TaskBatches) to a finite loss, and a `.keras`
    file of it loads with equal meta-parameters."""
    import keras
    import numpy as np
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices(tuple(np.stack(field) for field in zip(*batches)))
    assert np.isfinite(meta.fit(data, epochs=1, verbose=0).history["loss"][0])
    meta.save(str(tmp_path / "meta.keras"))
    loaded = keras.models.load_model(str(tmp_path / "meta.keras"))
    for a, b in zip(meta.learner.meta_variables, loaded.learner.meta_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
