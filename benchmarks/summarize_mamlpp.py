"""The MAML / MAML++ comparison of docs/results.md from the runs' own files: the learning-curve figure and the
table of test accuracies (latest checkpoint, best epoch, ensemble of the 3 best), each with its 95% interval.

Usage: python benchmarks/summarize_mamlpp.py --runs=LABEL=FOLDER,... --figure=docs/figures/NAME.png [--title=...]
FOLDER: an experiment folder written by main.py (epochs.json, test_*.csv and, after --train=False, the
ensemble's .ensemble.json).
"""

import glob
import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

flags.DEFINE_list("runs", [], "LABEL=FOLDER pairs.")
flags.DEFINE_string("figure", "", "where to write the learning-curve PNG (none if empty).")
flags.DEFINE_string("title", "", "the figure's title.")
FLAGS = flags.FLAGS


def main(_):
    import numpy as np

    runs = dict(pair.split("=", 1) for pair in FLAGS.runs)
    print("| run | iterations | training minutes | best validation (epoch) | test: latest | test: best epoch "
          "| test: ensemble of 3 |\n|---|---|---|---|---|---|---|")
    for label, folder in runs.items():
        epochs = json.load(open(os.path.join(folder, "epochs.json")))["epochs"]
        best = max(epochs, key=lambda r: r["val"])
        latest = glob.glob(os.path.join(folder, "test_*[0-9].pkl"))
        values = np.load(latest[0], allow_pickle=True)["mses"] if latest else None
        cell = "" if values is None else (f"{100 * values[:, -1].mean():.2f} +- "
                                          f"{100 * 1.96 * values[:, -1].std() / np.sqrt(len(values)):.2f}")
        ens = glob.glob(os.path.join(folder, "*.ensemble.json"))
        ens = json.load(open(ens[0])) if ens else {}
        fmt = lambda r: f"{100 * r['mean']:.2f} +- {100 * r['ci95']:.2f}" if r else ""  # noqa: E731
        print(f"| {label} | {epochs[-1]['iteration']} | {epochs[-1]['train_seconds'] / 60:.0f} | "
              f"{100 * best['val']:.2f} ({best['epoch']}) | {cell} | {fmt(ens.get('best'))} | "
              f"{fmt(ens.get('ensemble'))} |")
    if FLAGS.figure:
        from maml_tf.plotting import plot_learning_curves

        print("Wrote", plot_learning_curves(runs, FLAGS.figure, FLAGS.title))


if __name__ == "__main__":
    app.run(main)
