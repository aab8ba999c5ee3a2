"""The sinusoid figure of the paper (Finn et al. 2017, Figure 2)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from maml_tf.data.sinusoid import SinusoidTasks  # noqa: E402


def plot_sinusoid(config, algo, path: str, seed: int = 0, steps=(1, 10)) -> str:
    """Saves the true function, the K support points and the predictions before
    adaptation and after `steps` inner steps for one test task.

    Returns:
      `path`.
    """
    tasks = SinusoidTasks(config.update_batch_size, 0, seed, oracle=config.baseline == "oracle")
    x, y, amp, phase = tasks.sample(1)
    grid = np.linspace(-5.0, 5.0, 200)[None, :, None]
    support_x = tf.constant(tasks.to_inputs(x, amp, phase)[0], tf.float32)
    support_y = tf.constant(y[0], tf.float32)
    grid_x = tf.constant(tasks.to_inputs(grid, amp, phase)[0], tf.float32)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(grid[0, :, 0], amp[0] * np.sin(grid[0, :, 0] - phase[0]), "r", label="ground truth")
    ax.plot(x[0, :, 0], y[0, :, 0], "^", color="purple", label=f"{config.update_batch_size} points used for gradient")
    weights = algo.weights()
    ax.plot(grid[0, :, 0], algo.forward(weights, grid_x).numpy()[:, 0], ":", color="lightgreen",
            label="pre-update")
    done = 0
    for n, style in zip(steps, ("--", "-")):
        weights = algo.adapt(support_x, support_y, steps=n - done, weights=weights)
        done = n
        ax.plot(grid[0, :, 0], algo.forward(weights, grid_x).numpy()[:, 0], style, color="green",
                label=f"{n} grad step{'s' if n > 1 else ''}")
    ax.set_xlim(-5, 5)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{type(algo).__name__}, K={config.update_batch_size}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_learning_curves(runs: dict, path: str, title: str = "") -> str:
    """Validation accuracy (MSE) at the end of each epoch against iterations and against training time, one
    line per run. `runs`: `{label: experiment folder}` (each with the `epochs.json` training writes).

    Returns:
      `path`.
    """
    import json
    import os

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    metric = "accuracy"
    for label, folder in runs.items():
        with open(os.path.join(folder, "epochs.json")) as f:
            data = json.load(f)
        metric, records = data["metric"], data["epochs"]
        values = [100 * r["val"] if metric == "accuracy" else r["val"] for r in records]
        axes[0].plot([r["iteration"] for r in records], values, "o-", label=label)
        axes[1].plot([r["train_seconds"] / 60 for r in records], values, "o-", label=label)
    axes[0].set_xlabel("meta-iterations")
    axes[1].set_xlabel("training time (minutes)")
    axes[0].set_ylabel(f"validation {metric}" + (" (%)" if metric == "accuracy" else ""))
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_task_embeddings(algo, tasks, path: str, title: str = "") -> str:
    """MMAML's task embeddings (`algo.task_embedding` of each task's support set) projected on their first two
    principal components, coloured by the task's function family; the title gives how many tasks lie nearest to
    their own family's mean embedding (in the full embedding space). Returns `path`."""
    embeddings = np.stack([algo.task_embedding(tf.constant(t.x[:t.num_support], algo.dtype),
                                               tf.constant(t.y[:t.num_support], algo.dtype)).numpy() for t in tasks])
    centred = embeddings - embeddings.mean(0)
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ axes[:2].T
    explained = singular[:2] ** 2 / max(np.sum(singular ** 2), 1e-30)
    families = np.array([t.family.name for t in tasks])
    names = list(dict.fromkeys(families))  # In order of appearance.
    centroids = np.stack([embeddings[families == name].mean(0) for name in names])
    nearest = np.argmin(((embeddings[:, None] - centroids[None]) ** 2).sum(-1), 1)
    separated = float(np.mean(np.array(names)[nearest] == families))
    print(f"Task embeddings: {separated:.1%} of {len(tasks)} tasks are nearest to their mode's mean embedding.")
    fig, ax = plt.subplots(figsize=(5, 4.2))
    for name in names:
        ax.scatter(projected[families == name, 0], projected[families == name, 1], s=8, alpha=0.7, label=name)
    ax.set_xlabel(f"PC 1 ({explained[0]:.0%} of the variance)")
    ax.set_ylabel(f"PC 2 ({explained[1]:.0%})")
    ax.legend(fontsize=8, markerscale=2)
    ax.set_title(title or f"Task embeddings of {len(tasks)} tasks (PCA)\n{separated:.0%} nearest to their mode's mean "
                          "embedding", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
