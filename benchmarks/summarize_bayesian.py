"""The regression tables of docs/results.md (BMAML, EMAML, PLATIPUS, MAML) from the runs' own test files, and their
sample figures copied next to the results page.

Usage: python benchmarks/summarize_bayesian.py --runs=LABEL=FOLDER,... [--figures=docs/figures/PREFIX]
       [--calibration=docs/figures/NAME.png]
FOLDER: an experiment folder after `main.py --train=False` on a regression datasource (test_*.pkl, the
predictive measures test_*.uncertainty.json and test_*.samples.png). Each row: the MSE of the prediction (the
particles' or samples' mean) after 1 and 10 inner steps (the test table; a task whose loss diverged to NaN is
counted, not averaged) and the median after 10, then the predictive measures after the
trained number of steps, each with its 95% interval over the test tasks.
"""

import glob
import json
import os
import shutil
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

flags.DEFINE_list("runs", [], "LABEL=FOLDER pairs.")
flags.DEFINE_string("figures", "", "copy each run's samples figure to <figures>_<label>.png (none if empty).")
flags.DEFINE_string("calibration", "", "draw the runs' calibration curves (fraction of held-out points inside the "
                    "central interval against its level) into this PNG (none if empty).")
FLAGS = flags.FLAGS


def cell(stats, scale=1.0, digits=3):
    if stats is None or stats.get("mean") is None:
        return "-"
    if stats.get("ci95") is None:
        return f"{scale * stats['mean']:.{digits}g}"
    text = f"{scale * stats['mean']:.{digits}g} +- {scale * stats['ci95']:.2g}"
    return text + (f" ({stats['diverged']} diverged)" if stats.get("diverged") else "")


def main(_):
    import numpy as np

    runs = dict(pair.split("=", 1) for pair in FLAGS.runs)
    curves = {}
    print("| run | iterations | samples | MSE, 1 step | MSE, 10 steps | median, 10 steps | MSE (true f) | 90% coverage "
          "| NLL | function coverage | by family |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for label, folder in runs.items():
        pkl = sorted(glob.glob(os.path.join(folder, "test_*[0-9].pkl")))
        values = np.load(pkl[0], allow_pickle=True)["mses"]
        mse = []
        for j in (1, 10):
            column = values[:, j][np.isfinite(values[:, j])]  # A diverged task (NaN) is counted, not averaged.
            mse.append({"mean": column.mean(), "ci95": 1.96 * column.std() / np.sqrt(len(column)),
                        "diverged": len(values) - len(column)})
        result = json.load(open(glob.glob(os.path.join(folder, "*.uncertainty.json"))[0]))
        s = result["summary"]
        families = ", ".join(f"{name} {100 * v['mean']:.0f}%" for name, v in result["coverage_by_family"].items())
        iterations = json.load(open(os.path.join(folder, "config.json")))["metatrain_iterations"]
        median = float(np.median(np.where(np.isnan(values[:, 10]), np.inf, values[:, 10])))
        print(f"| {label} | {iterations:,} | {result['samples']} | {cell(mse[0])} | {cell(mse[1])} | {median:.3g} | "
              f"{cell(s['mse_true'])} | {cell(s['coverage90'], 100)}% | {cell(s['nll'])} | {cell(s['fits'], 100)}% | "
              f"{families} |")
        if FLAGS.figures:
            figure = glob.glob(os.path.join(folder, "*.samples.png"))[0]
            shutil.copy(figure, f"{FLAGS.figures}_{label}.png")
        curves[label] = result.get("calibration")
    if FLAGS.calibration:
        plot_calibration({k: v for k, v in curves.items() if v}, FLAGS.calibration)


def plot_calibration(curves, path):
    """Observed against nominal coverage of the central predictive intervals, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="calibrated")
    for label, curve in curves.items():
        levels = sorted(curve, key=float)
        ax.plot([float(v) for v in levels], [curve[v] for v in levels], "o-", ms=3, label=label)
    ax.set_xlabel("nominal level of the central interval")
    ax.set_ylabel("held-out points inside")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"Wrote {path}")


if __name__ == "__main__":
    app.run(main)
