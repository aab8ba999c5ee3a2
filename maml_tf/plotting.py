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
