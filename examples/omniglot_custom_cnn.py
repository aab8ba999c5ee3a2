"""Meta-learn your own functional Keras CNN on Omniglot 5-way 1-shot with `MetaModel.fit`.

    python data/prepare_omniglot.py --source DIR --out data/omniglot_resized   # once
    python examples/omniglot_custom_cnn.py --steps=1000
    python examples/omniglot_custom_cnn.py --tfds_data_dir=../shared/data/tfds   # from tensorflow-datasets

The network is built here with Keras layers (3 conv blocks of 32 filters,
stride 2, with `maml_tf.networks.BatchNormTF1`, whose second derivatives are
exact, then global average pooling and a dense head). Tasks come from the
project's Omniglot pipeline (the original split and sampling). Training
reports the pre- and post-adaptation accuracy; the end prints the accuracy
on `--test_tasks` tasks of the test characters before and after 1 and 5 steps.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from absl import app, flags  # noqa: E402

from maml_tf import MetaModel, TaskBatch  # noqa: E402
from maml_tf.config import Config  # noqa: E402
from maml_tf.data.images import make_image_tasks  # noqa: E402
from maml_tf.networks import BatchNormTF1  # noqa: E402

flags.DEFINE_integer("steps", 1000, "meta-iterations.")
flags.DEFINE_integer("meta_batch_size", 16, "tasks per meta-iteration.")
flags.DEFINE_integer("filters", 32, "conv filters.")
flags.DEFINE_integer("test_tasks", 200, "test tasks of the final evaluation.")
flags.DEFINE_string("data_dir", "data", "folder with omniglot_resized/ (from data/prepare_omniglot.py).")
flags.DEFINE_string("tfds_data_dir", None, "read Omniglot from this tensorflow-datasets folder instead.")
FLAGS = flags.FLAGS


def custom_cnn(filters: int, ways: int) -> keras.Model:
    inputs = keras.Input((28, 28, 1))
    x = inputs
    for i in range(3):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", name=f"conv{i}")(x)
        x = BatchNormTF1(name=f"bn{i}")(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(ways, name="logits")(x), name="custom_cnn")


def main(_):
    source = dict(omniglot_source="tfds", tfds_data_dir=FLAGS.tfds_data_dir) if FLAGS.tfds_data_dir else {}
    config = Config(datasource="omniglot", update_batch_size=1, data_dir=FLAGS.data_dir, **source)
    train_tasks = make_image_tasks(config, "train", seed=0, tfds_download=False).dataset(FLAGS.meta_batch_size)
    val_tasks = make_image_tasks(config, "val", seed=1, tfds_download=False).dataset(FLAGS.meta_batch_size)
    meta = MetaModel(custom_cnn(FLAGS.filters, 5), "maml", loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                     metrics=["accuracy"], inner_lr=0.4, num_inner_steps=1)
    meta.compile(optimizer=keras.optimizers.Adam(1e-3))
    epochs = max(FLAGS.steps // 200, 1)
    meta.fit(train_tasks, epochs=epochs, steps_per_epoch=FLAGS.steps // epochs, validation_data=val_tasks,
             validation_steps=5, verbose=2)
    test = make_image_tasks(config, "test", seed=2, tfds_download=False).dataset(FLAGS.test_tasks)
    result = meta.evaluate_tasks(TaskBatch(*next(iter(test))), steps=5)
    print(f"Omniglot 5-way 1-shot, {FLAGS.test_tasks} test tasks: accuracy before adaptation "
          f"{result['pre_accuracy']:.3f}, after 1 step {result['accuracy'][0]:.3f}, "
          f"after 5 steps {result['accuracy'][4]:.3f}")


if __name__ == "__main__":
    app.run(main)
