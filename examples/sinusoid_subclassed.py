"""Meta-learn a subclassed Keras regression model on sinusoids with `MetaModel.fit`, then save it.

    python examples/sinusoid_subclassed.py --steps=3000 --out=logs/examples/sine.keras

Tasks: y = A sin(x - phase), A ~ U[0.1, 5], phase ~ U[0, pi], x ~ U[-5, 5]
(the MAML paper's), 10 support and 10 query points, meta-batch 25, one inner
step of 0.01, as `main.py --datasource=sinusoid`. Prints the query MSE of 200
new tasks before adaptation and after 1 and 10 steps.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from maml_tf import MetaModel, TaskBatch, regression_tasks  # noqa: E402
from sine_model import SineNet, sample_sinusoid  # noqa: E402

flags.DEFINE_integer("steps", 3000, "meta-iterations.")
flags.DEFINE_integer("test_tasks", 200, "tasks of the final evaluation.")
flags.DEFINE_string("out", "logs/examples/sine.keras", "where to save the meta-trained model.")
FLAGS = flags.FLAGS


def main(_):
    model = SineNet()
    model(np.zeros((1, 1), np.float32))  # Build it.
    meta = MetaModel(model, "maml", loss="mse", inner_lr=0.01, num_inner_steps=1)
    meta.compile(optimizer=keras.optimizers.Adam(1e-3))
    tasks = regression_tasks(sample_sinusoid, num_support=10, num_query=10, meta_batch_size=25, seed=0)
    epochs = max(FLAGS.steps // 500, 1)
    meta.fit(tasks, epochs=epochs, steps_per_epoch=FLAGS.steps // epochs, verbose=2)
    test = regression_tasks(sample_sinusoid, num_support=10, num_query=10, meta_batch_size=FLAGS.test_tasks, seed=1)
    result = meta.evaluate_tasks(TaskBatch(*next(iter(test))), steps=10)
    print(f"Sinusoid, {FLAGS.test_tasks} new tasks, 10-shot: query MSE before adaptation {result['pre_loss']:.3f}, "
          f"after 1 step {result['loss'][0]:.3f}, after 10 steps {result['loss'][9]:.3f}")
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    meta.save(FLAGS.out)
    print(f"Saved {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
