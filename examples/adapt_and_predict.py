"""Load a meta-trained model, adapt it to a new task from a few points, and predict.

    python examples/sinusoid_subclassed.py --out=logs/examples/sine.keras   # first
    python examples/adapt_and_predict.py --model=logs/examples/sine.keras --shots=5

Draws one new sinusoid, adapts on `--shots` points with `--steps` inner steps
(`MetaModel.adapted_model`; the meta-trained weights are untouched), and
prints the MSE on 100 points of the curve before and after adaptation.
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

import sine_model  # noqa: E402,F401  (registers SineNet for loading)
from maml_tf import MetaModel  # noqa: E402,F401  (registers MetaModel for loading)

flags.DEFINE_string("model", "logs/examples/sine.keras", "a MetaModel saved with .save().")
flags.DEFINE_integer("shots", 5, "points given for adaptation.")
flags.DEFINE_integer("steps", 10, "inner steps.")
flags.DEFINE_integer("seed", 7, "which new task.")
FLAGS = flags.FLAGS


def main(_):
    if not os.path.exists(FLAGS.model):
        raise app.UsageError(f"No model at {FLAGS.model}; run examples/sinusoid_subclassed.py --out={FLAGS.model}.")
    meta = keras.models.load_model(FLAGS.model)
    rng = np.random.default_rng(FLAGS.seed)
    amplitude, phase = rng.uniform(0.1, 5.0), rng.uniform(0.0, np.pi)
    x = rng.uniform(-5.0, 5.0, (FLAGS.shots, 1)).astype("float32")
    y = (amplitude * np.sin(x - phase)).astype("float32")
    grid = np.linspace(-5, 5, 100, dtype="float32")[:, None]
    truth = amplitude * np.sin(grid - phase)
    before = meta.predict(grid, verbose=0)
    adapted = meta.adapted_model(x, y, steps=FLAGS.steps)
    after = adapted.predict(grid)
    print(f"Task A={amplitude:.2f}, phase={phase:.2f}, {FLAGS.shots} points, {FLAGS.steps} steps: MSE on the curve "
          f"before {np.mean((before - truth) ** 2):.3f}, after {np.mean((after - truth) ** 2):.3f}")


if __name__ == "__main__":
    app.run(main)
