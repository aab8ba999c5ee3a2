"""Uncertainty measures of a predictive distribution on regression and classification tasks, shared by every
algorithm (BMAML, EMAML, PLATIPUS, MAML as a point estimate; LLAMA's Laplace samples).

An algorithm's predictive for a task (`algo.predictive(support_x, support_y, x,
steps, num_samples)`) is S sampled functions evaluated at `x` (particles,
posterior draws; MAML: its one adapted function) and, if the algorithm has a
noise model, each sample's observation noise standard deviation. The
predictive distribution of an observation `y(x)` is the equal-weight mixture
of `N(f_s(x), std_s^2)`. For an algorithm without a noise model, `std_s` is
the task's true noise level (known to the task source): an oracle noise, the
most favourable choice for it.

Measures per task (`evaluate_regression`):

- `mse`: of the predictive mean (the samples' mean) on held-out observations;
  `mse_true`: against the noise-free function;
- `coverage90`: the fraction of held-out observations inside the central 90%
  interval of the predictive mixture (0.9 when calibrated);
- `nll`: the mean negative log predictive density of the held-out observations;
- `fits`: whether at least one sample fits the true function (MSE on a grid
  of the input range below `fit_mse`): PLATIPUS's ambiguity measure, whose
  mean over tasks is the *function coverage*;
- `calibration`: the coverage of the central intervals at the levels
  `CALIBRATION_LEVELS` (on the diagonal when calibrated).

Classification (`evaluate_classification`): the accuracy and NLL of the
samples' mean softmax, and its expected calibration error.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Dict, Optional, Sequence

import numpy as np


CALIBRATION_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)  # Of the calibration curve.


def mixture_cdf(y: np.ndarray, means: np.ndarray, stds: np.ndarray) -> np.ndarray:
    """`[N]`: the CDF at `y` `[N]` of equal-weight Gaussian mixtures (`means`, `stds` `[S, N]`; a zero std is a
    point mass)."""
    z = (y[None] - means) / np.where(stds > 0, stds, 1.0)
    gaussian = 0.5 * (1.0 + erf(z / math.sqrt(2.0)))
    point = (y[None] >= means).astype(float)
    return np.mean(np.where(stds > 0, gaussian, point), axis=0)


def erf(x: np.ndarray) -> np.ndarray:
    """The error function, elementwise (Numerical Recipes' `erfcc`, fractional error below 1.2e-7; numpy has
    none and scipy is not a dependency)."""
    x = np.asarray(x, dtype=float)
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))))
    erfc = t * np.exp(poly)
    return np.where(x >= 0, 1.0 - erfc, erfc - 1.0)


def mixture_interval(means: np.ndarray, stds: np.ndarray, level: float = 0.9, iterations: int = 60):
    """`(lower, upper)` `[N]`: the central `level` interval of each point's mixture (bisection on its CDF)."""
    spread = np.max(stds, axis=0) * 10 + 1e-12
    lo, hi = np.min(means, axis=0) - spread, np.max(means, axis=0) + spread
    bounds = []
    for q in ((1 - level) / 2, (1 + level) / 2):
        a, b = lo.copy(), hi.copy()
        for _ in range(iterations):
            mid = 0.5 * (a + b)
            below = mixture_cdf(mid, means, stds) < q
            a, b = np.where(below, mid, a), np.where(below, b, mid)
        bounds.append(0.5 * (a + b))
    return bounds[0], bounds[1]


def mixture_nll(y: np.ndarray, means: np.ndarray, stds: np.ndarray) -> float:
    """Mean over the points of `-log p(y)` under the mixtures (inf if a std is 0)."""
    if np.any(stds <= 0):
        return float("inf")
    log_pdf = -0.5 * np.square((y[None] - means) / stds) - np.log(stds) - 0.5 * math.log(2 * math.pi)
    top = np.max(log_pdf, axis=0)
    log_mix = top + np.log(np.mean(np.exp(log_pdf - top), axis=0))
    return float(-np.mean(log_mix))


@dataclasses.dataclass
class Predictive:
    """S sampled functions at the points: `means` `[S, N]`, `stds` `[S, N]` (noise of each sample)."""

    means: np.ndarray
    stds: np.ndarray

    @property
    def mean(self) -> np.ndarray:
        return self.means.mean(0)


def predictive(algo, task, x: np.ndarray, steps: Optional[int], num_samples: Optional[int]):
    """`(Predictive, learned_noise)` of `algo` for a `FunctionTask` at inputs `x` `[N, 1]`, adapted to its
    support points."""
    import tensorflow as tf

    k = task.num_support
    dtype = algo.dtype
    outputs, noise = algo.predictive(tf.constant(task.x[:k], dtype), tf.constant(task.y[:k], dtype),
                                     tf.constant(x, dtype), steps, num_samples)
    means = outputs.numpy().reshape(outputs.shape[0], -1)
    if noise is None:
        stds = np.full_like(means, task.noise_std)
    else:
        stds = np.broadcast_to(np.asarray(noise).reshape(-1, 1), means.shape).copy()
    return Predictive(means, stds), noise is not None


def evaluate_regression(algo, tasks: Sequence, steps: Optional[int] = None, num_samples: Optional[int] = None,
                        level: float = 0.9, fit_mse: float = 1.0, grid_points: int = 100,
                        input_range=(-5.0, 5.0)) -> Dict[str, object]:
    """The measures of the module docstring on `tasks` (`FunctionTask`s with `num_support` set).

    Returns:
      `{'per_task': {measure: [tasks]}, 'summary': {measure: {'mean', 'ci95'}}, 'coverage_by_family': ...,
      'samples', 'learned_noise', 'level', 'fit_mse', 'calibration': {nominal level: the fraction of
      held-out observations inside the central interval of that level}}`.
    """
    grid = np.linspace(*input_range, grid_points)[:, None]
    coverage = f"coverage{int(round(100 * level))}"
    rows = {"mse": [], "mse_true": [], coverage: [], "nll": [], "fits": []}
    families, samples, learned, curve = [], None, False, {lv: [] for lv in CALIBRATION_LEVELS}
    for task in tasks:
        k = task.num_support
        held_x, held_y = task.x[k:], task.y[k:, 0]
        pred, learned = predictive(algo, task, np.concatenate([held_x, grid]), steps, num_samples)
        n = len(held_x)
        held = Predictive(pred.means[:, :n], pred.stds[:, :n])
        curves = pred.means[:, n:]
        samples = pred.means.shape[0]
        rows["mse"].append(float(np.mean(np.square(held.mean - held_y))))
        rows["mse_true"].append(float(np.mean(np.square(held.mean - task.f(held_x)[:, 0]))))
        inside = {}
        for lv in sorted(set(CALIBRATION_LEVELS) | {level}):  # One bisection per level.
            low, high = mixture_interval(held.means, held.stds, lv)
            inside[lv] = float(np.mean((held_y >= low) & (held_y <= high)))
        rows[coverage].append(inside[level])
        for lv in CALIBRATION_LEVELS:
            curve[lv].append(inside[lv])
        rows["nll"].append(mixture_nll(held_y, held.means, held.stds))
        rows["fits"].append(float(np.min(np.mean(np.square(curves - task.f(grid)[:, 0][None]), axis=1)) < fit_mse))
        families.append(task.family.name)
    summary = {name: _mean_ci(values) for name, values in rows.items()}
    by_family = {name: _mean_ci([f for f, fam in zip(rows["fits"], families) if fam == name])
                 for name in sorted(set(families))}
    calibration = {f"{lv:g}": float(np.mean(v)) for lv, v in curve.items()}
    return {"per_task": rows, "summary": summary, "coverage_by_family": by_family, "samples": samples,
            "learned_noise": learned, "level": level, "fit_mse": fit_mse, "tasks": len(tasks),
            "calibration": calibration}


def evaluate_classification(algo, batches: Sequence, steps: Optional[int] = None,
                            num_samples: Optional[int] = None, bins: int = 15) -> Dict[str, object]:
    """The predictive distribution of classification tasks: per query example, the mean over the samples of
    their softmax probabilities (one sample for MAML: its softmax).

    Measures: `accuracy` (of the mean probabilities' argmax) and `nll` (`-log` of the true class's mean
    probability, averaged over a task's query examples) per task, and `ece`, the expected calibration error
    over every query example (`bins` equal-width confidence bins: the sum over bins of the bin's share of
    examples times |its accuracy - its mean confidence|).

    Args:
      batches: one-task `TaskBatch`es (one-hot labels).
    """
    import tensorflow as tf

    rows = {"accuracy": [], "nll": []}
    confidences, correct, samples = [], [], None
    for batch in batches:
        outputs, _ = algo.predictive(batch.support_x[0], batch.support_y[0], batch.query_x[0], steps, num_samples)
        probs = tf.reduce_mean(tf.nn.softmax(tf.cast(outputs, tf.float64)), axis=0).numpy()
        labels = np.argmax(np.asarray(batch.query_y[0]), axis=-1)
        samples = int(outputs.shape[0])
        hits = np.argmax(probs, axis=-1) == labels
        rows["accuracy"].append(float(np.mean(hits)))
        rows["nll"].append(float(-np.mean(np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-300)))))
        confidences.append(np.max(probs, axis=-1))
        correct.append(hits)
    confidence, hit = np.concatenate(confidences), np.concatenate(correct)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    ece = sum(np.mean(which == b) * abs(np.mean(hit[which == b]) - np.mean(confidence[which == b]))
              for b in range(bins) if np.any(which == b))
    summary = {name: _mean_ci(values) for name, values in rows.items()}
    summary["ece"] = {"mean": float(ece), "ci95": None}
    return {"per_task": rows, "summary": summary, "samples": samples, "tasks": len(batches), "bins": bins}


def _mean_ci(values) -> Dict[str, Optional[float]]:
    values = np.asarray(values, dtype=float)
    if not len(values) or not np.all(np.isfinite(values)):
        return {"mean": None if not len(values) else float(np.mean(values)), "ci95": None}
    return {"mean": float(values.mean()), "ci95": float(1.96 * values.std() / math.sqrt(len(values)))}


def report(result: Dict[str, object], path: str) -> str:
    """Prints the summary as a Markdown table and writes `result` as JSON to `path`."""
    s = result["summary"]
    if "learned_noise" in result:  # Regression.
        detail = "; noise: " + ("learned" if result["learned_noise"] else "the task's true noise (no noise model)")
    else:
        detail = f"; mean of their softmax probabilities, ECE over {result['bins']} bins"
    print(f"\nPredictive distribution on {result['tasks']} tasks ({result['samples']} sample(s) each{detail}):"
          "\n\n| measure | mean | 95% interval |\n|---|---|---|")
    for name, stats in s.items():
        if stats["mean"] is None or stats["ci95"] is None:
            print(f"| {name} | {stats['mean']} | - |")
        else:
            print(f"| {name} | {stats['mean']:.4g} | {stats['mean'] - stats['ci95']:.4g} to "
                  f"{stats['mean'] + stats['ci95']:.4g} |")
    for family, stats in result.get("coverage_by_family", {}).items():
        print(f"| fits ({family} tasks) | {stats['mean']:.4g} | - |")
    if result.get("calibration"):
        print("\nHeld-out points inside the central interval of each level: " +
              ", ".join(f"{level}: {inside:.3f}" for level, inside in result["calibration"].items()))
    with open(path, "w") as f:
        json.dump(_finite(result), f, indent=1)
    print(f"Wrote {path}")
    return path


def _finite(value):
    """`value` with every non-finite float replaced by None (strict JSON; an infinite NLL has no density)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def plot_samples(algo, tasks: Sequence, path: str, steps: Optional[int] = None, num_samples: Optional[int] = None,
                 title: str = "", input_range=(-5.0, 5.0)) -> str:
    """One panel per task: the true function, the support points, each predictive sample (thin lines), their
    mean and the 90% predictive interval. Returns `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(*input_range, 200)[:, None]
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        k = task.num_support
        pred, _ = predictive(algo, task, grid, steps, num_samples)
        lower, upper = mixture_interval(pred.means, pred.stds, 0.9)
        ax.fill_between(grid[:, 0], lower, upper, color="tab:blue", alpha=0.15, label="90% interval")
        for i, curve in enumerate(pred.means):
            ax.plot(grid[:, 0], curve, color="tab:blue", lw=0.7, alpha=0.6, label="samples" if i == 0 else None)
        ax.plot(grid[:, 0], pred.mean, color="tab:blue", lw=1.8, label="mean")
        ax.plot(grid[:, 0], task.f(grid)[:, 0], "r--", lw=1.5, label="true function")
        ax.plot(task.x[:k, 0], task.y[:k, 0], "k^", label=f"{k} support points")
        ax.set_title(f"{task.family.name}", fontsize=9)
        ax.set_xlim(*input_range)
    axes[0][0].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
