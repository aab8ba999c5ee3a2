"""Table of the sinusoid runs of `benchmarks/sinusoid_seeds.sh`: per step size and seed, the mean and median
test MSE before adaptation and after 1, 5 and 10 steps (600 tasks each), as docs/results.md shows it.

    python benchmarks/summarize_sinusoid.py [--logdir=logs/sine_seeds]
"""

import glob
import os
import pickle
import sys

import numpy as np

PAPER = {1: 0.67, 5: 0.38, 10: 0.35}


def main(logdir="logs/sine_seeds"):
    print("| alpha | seed | before | 1 step | 5 steps | 10 steps | tasks with a non-finite MSE at 10 steps |")
    print("|---|---|---|---|---|---|---|")
    for path in sorted(glob.glob(os.path.join(logdir, "alpha*_seed*", "*", "test_ubs5_*.pkl"))):
        run = path.split(os.sep)[-3]
        alpha, seed = run[len("alpha"):].split("_seed")
        mses = pickle.load(open(path, "rb"))["mses"]
        worst = np.where(np.isnan(mses), np.inf, mses)  # A diverged (NaN) task counts as worst in the median.
        cells = [f"{np.mean(mses[:, j]):.3g} ({np.median(worst[:, j]):.3g})" for j in (0, 1, 5, 10)]
        print(f"| {alpha} | {seed} | " + " | ".join(cells) + f" | {int(np.sum(~np.isfinite(mses[:, 10])))} |")
    print(f"\nMean (median) over the 600 tasks; paper: {PAPER[1]} / {PAPER[5]} / {PAPER[10]} after 1 / 5 / 10 steps.")


if __name__ == "__main__":
    main(*[a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--logdir=")])
