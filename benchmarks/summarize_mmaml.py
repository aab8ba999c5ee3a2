"""MMAML's regression table from the test outputs of `benchmarks/mmaml_runs.sh` (docs/results.md).

For 2, 3 and 5 modes: the query MSE after `--step` inner steps (default 5, as trained) of MAML, Multi-MAML
(one MAML per mode, each tested on its mode's 600 tasks; the modes pooled), both with the meta-gradient clipped
to norm 2 as the authors' baselines and, where run (`CLIP=0`), without, and MMAML, with 95% intervals over the
tasks, then each mode's mean (the test tasks of a multimodal run are the modes in turn: task i is of mode
i % modes).

Usage: python benchmarks/summarize_mmaml.py [--logdir=logs/mmaml] [--step=5]
"""

from __future__ import annotations

import argparse
import glob
import os
import pickle

import numpy as np

MODE_NAMES = ("sine", "line", "quadratic", "tanh", "l1-norm")
PAPER_FILM = {2: 0.336, 3: 0.444, 5: 0.868}  # Vuorio et al. 2019, Table 1, MMAML (FiLM).


def load(path: str, step: int) -> np.ndarray:
    with open(path, "rb") as f:
        return pickle.load(f)["mses"][:, step]


def runs(logdir: str, modes: int, step: int) -> dict:
    """`{method: (values [tasks], modes_of_tasks [tasks])}` of what exists for `modes`."""
    stem = "test_ubs5_stepsize0.001.pkl"
    name = "cls_5.mbs_{}.ubs_5.numstep5.updatelr0.001nonorm{}.modes{}{}"
    found = {}
    for clip, label in ((".clipnorm2", ""), ("", ", no clipping")):
        path = os.path.join(logdir, name.format(25 * modes, clip, modes, ""), stem)
        if os.path.exists(path):
            values = load(path, step)
            found["MAML" + label] = values, np.arange(len(values)) % modes
        parts = [os.path.join(logdir, name.format(25, clip, modes, f".mode{k}"), stem) for k in range(modes)]
        if all(os.path.exists(p) for p in parts):
            values = [load(p, step) for p in parts]
            found["Multi-MAML" + label] = np.concatenate(values), np.concatenate([np.full(len(v), k) for k, v in
                                                                                  enumerate(values)])
    mmaml = sorted(glob.glob(os.path.join(logdir, name.format(25 * modes, "", modes, ".mmaml.film*"), stem)))
    if mmaml:
        values = load(mmaml[0], step)
        found["MMAML (FiLM)"] = values, np.arange(len(values)) % modes
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--logdir", default="logs/mmaml")
    parser.add_argument("--step", type=int, default=5)
    args = parser.parse_args()
    table = {m: runs(args.logdir, m, args.step) for m in (2, 3, 5)}
    methods = list(dict.fromkeys(k for found in table.values() for k in found))
    print(f"Query MSE after {args.step} steps (mean and 95% interval over the test tasks):\n")
    print("| method | " + " | ".join(f"{m} modes" for m in table) + " |")
    print("|---|" + "---|" * len(table))
    for method in methods:
        cells = []
        for found in table.values():
            if method in found:
                v = found[method][0]
                cells.append(f"{v.mean():.3f} +- {1.96 * v.std() / np.sqrt(len(v)):.3f}")
            else:
                cells.append("-")
        print(f"| {method} | " + " | ".join(cells) + " |")
    print("| MMAML (FiLM), paper | " + " | ".join(f"{PAPER_FILM[m]}" for m in table) + " |")
    for m, found in table.items():
        if not found:
            continue
        print(f"\n{m} modes, each mode's mean MSE:\n")
        print("| method | " + " | ".join(MODE_NAMES[:m]) + " |")
        print("|---|" + "---|" * m)
        for method, (values, modes) in found.items():
            print(f"| {method} | " + " | ".join(f"{values[modes == k].mean():.3f}" for k in range(m)) + " |")


if __name__ == "__main__":
    main()
