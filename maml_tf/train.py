"""The training and test programs of `main.py`, as the original `main.train`/`main.test`.

`run(config)` builds the network, the algorithm and the task sources from a
`Config`, restores a checkpoint, then trains (`train`) or evaluates on 600
tasks (`test`). Outputs go to `config.logdir/<exp_string>/`: TensorBoard
summaries with the original tags, checkpoints (`model-<iteration>`, with the
Adam state and the iteration), and the test CSV / pickle / sinusoid figure.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import pickle
import sys
import time
from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from maml_tf import algorithms, networks
from maml_tf.config import Config
from maml_tf.data import make_tasks

SUMMARY_INTERVAL = 100
SAVE_INTERVAL = 1000
TEST_SEED = 1  # The original seeds numpy and random with 1 before testing.


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, missing checkpoint); the message says why."""


# =============================================================== construction
def configure_threads(config: Config) -> None:
    """`--intra_op_threads`: must run before TensorFlow starts its runtime (the first op)."""
    if config.intra_op_threads == tf.config.threading.get_intra_op_parallelism_threads():
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(config.intra_op_threads)
    except RuntimeError:
        print("Warning: --intra_op_threads not applied: TensorFlow was already running.", file=sys.stderr)


def build_algorithm(config: Config, model=None):
    """The algorithm of `config.algorithm` on the original network for `config`."""
    model = model or networks.build_network(config)
    algo = algorithms.get(config.algorithm).from_config(config, model)
    if config.jit_compile:
        algo.compile(jit_compile=True)
    return algo


def experiment_dir(config: Config) -> str:
    return os.path.join(config.logdir, config.exp_string())


# ================================================================= checkpoints
class Checkpoints:
    """The algorithm's state (`algo.checkpoint_objects()`) and the iteration, every `SAVE_INTERVAL` iterations.

    Deliberate difference: the original saves trainable variables only, so
    resuming restarts Adam from zero; here the optimiser state is kept.
    """

    def __init__(self, algo, directory: str):
        self.iteration = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.objects = algo.checkpoint_objects()
        self.checkpoint = tf.train.Checkpoint(iteration=self.iteration, **self.objects)
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=10, checkpoint_name="model")
        self.directory = directory

    def save(self, iteration: int) -> str:
        """Saves after `iteration` (0-based) has been done, as `model-<iteration>`."""
        self.iteration.assign(iteration + 1)
        return self.manager.save(checkpoint_number=iteration)

    def path(self, test_iter: int = -1) -> Optional[str]:
        if test_iter > 0:
            path = os.path.join(self.directory, f"model-{test_iter}")
            if not tf.io.gfile.exists(path + ".index"):
                raise TrainingError(f"No checkpoint for --test_iter={test_iter} in {self.directory}; "
                                    f"available: {self.available()}.")
            return path
        return self.manager.latest_checkpoint

    def available(self):
        return [int(p.rsplit("-", 1)[1]) for p in self.manager.checkpoints] or "none"

    def restore(self, path: str) -> int:
        """Restores `path`; returns the number of iterations done."""
        checkpoint = self.checkpoint
        if "loss_scale" in self.objects and not any(
                name.startswith("loss_scale/") for name, _ in tf.train.list_variables(path)):
            # Written without --mixed_precision: everything else resumes, the loss scale starts afresh.
            checkpoint = tf.train.Checkpoint(iteration=self.iteration,
                                             **{k: v for k, v in self.objects.items() if k != "loss_scale"})
        # Extra values (the loss scale of a --mixed_precision run resumed without it) are left unused.
        checkpoint.restore(path).assert_existing_objects_matched().expect_partial()
        return int(self.iteration.numpy())


# ====================================================================== train
def _to_scalars(results: Dict, classification: bool) -> Dict[str, float]:
    out = {"Pre-update loss": float(results["total_loss1"])}
    for j, value in enumerate(results.get("total_losses2", [])):
        out[f"Post-update loss, step {j + 1}"] = float(value)
    if classification and "total_accuracy1" in results:
        out["Pre-update accuracy"] = float(results["total_accuracy1"])
        for j, value in enumerate(results["total_accuracies2"]):
            out[f"Post-update accuracy, step {j + 1}"] = float(value)
    if "loss_scale" in results:
        out["Loss scale"] = float(results["loss_scale"])
    return out


class _Progress:
    """A one-line progress bar on a terminal; silent in logs (the interval prints carry the timing)."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.total, self.start, self.t0, self.last = total, start, time.time(), 0.0
        self.enabled = enabled and sys.stderr.isatty()

    def rate(self, itr: int) -> float:
        return (itr + 1 - self.start) / max(time.time() - self.t0, 1e-9)

    def eta(self, itr: int) -> str:
        secs = (self.total - itr - 1) / max(self.rate(itr), 1e-9)
        return time.strftime("%H:%M:%S", time.gmtime(secs))

    def update(self, itr: int):
        now = time.time()
        if not self.enabled or now - self.last < 0.5:
            return
        self.last = now
        frac = (itr + 1) / max(self.total, 1)
        bar = "#" * int(30 * frac)
        sys.stderr.write(f"\r[{bar:<30}] {itr + 1}/{self.total} {self.rate(itr):.1f} it/s ETA {self.eta(itr)}")
        sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write("\n")


def train(config: Config, algo, checkpoints: Checkpoints, resume_itr: int = 0) -> Dict[str, list]:
    """The original training loop: pretraining, then meta-training.

    Prints every 1000 iterations (sinusoid) or 100 (images) the mean pre- and
    post-update loss (accuracy for classification) of the summary iterations
    since the last print, validates every 5 print intervals (images), writes
    summaries every 100 iterations and checkpoints every 1000 and at the end.

    Returns:
      History: `iteration`, `pre`, `post` of every summary iteration.
    """
    print_interval = 1000 if config.datasource == "sinusoid" else 100
    val_interval = 5 * print_interval
    pretrain, total = config.effective_pretrain_iterations, (config.effective_pretrain_iterations
                                                              + config.effective_metatrain_iterations)
    writer = tf.summary.create_file_writer(checkpoints.directory) if config.log else None
    # A resumed run draws new tasks: its sampler seed depends on the iteration it starts from.
    train_tasks = make_tasks(config, "train", config.seed + 7919 * resume_itr).batches(config.meta_batch_size)
    val_tasks = None
    if config.datasource != "sinusoid":
        val_tasks = make_tasks(config, "val", config.seed + 1).batches(config.meta_batch_size)
    num_steps = config.num_steps_reported
    key = "objective_metric" if config.classification else "objective_loss"
    key1 = "total_accuracy1" if config.classification else "total_loss1"
    history = {"iteration": [], "pre": [], "post": []}
    prelosses, postlosses, skipped = [], [], 0
    progress = _Progress(total, resume_itr, config.progress)
    print(f"Training {config.exp_string()} from iteration {resume_itr} to {total} "
          f"({pretrain} pretraining); outputs in {checkpoints.directory}", flush=True)
    itr = resume_itr - 1
    try:
        for itr in range(resume_itr, total):
            batch = next(train_tasks)
            summary = itr % SUMMARY_INTERVAL == 0 or itr % print_interval == 0
            if itr < pretrain:
                results = algo.pretrain_step(batch)
                watched = results["total_loss1"]
                if summary:  # The original evaluates the summary ops on the same batch, before the update.
                    results = algo.evaluate(batch, num_steps)
            else:
                results = algo.train_step(batch, num_steps if summary else None)
                watched = results["objective_loss"]
            watched = float(watched)
            # --mixed_precision: a step whose scaled float16 gradients overflowed is skipped (and the loss
            # scale halved); its losses are not logged. Only an overflow at loss scale 1 stops training.
            skip = bool(results.get("update_skipped", False))
            skipped += skip
            if not np.isfinite(watched) and not (skip and float(results["loss_scale"]) > 1.0):
                last = checkpoints.manager.latest_checkpoint or "none (no checkpoint was saved)"
                raise TrainingError(f"The loss became {watched} at iteration {itr}; training stopped. "
                                    f"Last good checkpoint: {last}. Try a smaller --meta_lr or --update_lr.")
            if summary and not skip:
                scalars = _to_scalars(results, config.classification)
                if writer is not None:
                    with writer.as_default(step=itr):
                        for tag, value in scalars.items():
                            tf.summary.scalar("metatrain_" + tag, value)
                pre, post = float(results[key1]), float(results[key])
                prelosses.append(pre)
                postlosses.append(post)
                history["iteration"].append(itr)
                history["pre"].append(pre)
                history["post"].append(post)
            if itr != 0 and itr % print_interval == 0:
                label = f"Pretrain Iteration {itr}" if itr < pretrain else f"Iteration {itr - pretrain}"
                progress.close()
                note = f", {skipped} updates skipped by loss scaling" if skipped else ""
                # With Omniglot's intervals the only summary of an interval may be a skipped step.
                means = f"{np.mean(prelosses)}, {np.mean(postlosses)}" if prelosses else "no summary (skipped)"
                print(f"{label}: {means}  "
                      f"[{progress.rate(itr):.1f} it/s, ETA {progress.eta(itr)}{note}]", flush=True)
                prelosses, postlosses, skipped = [], [], 0
            if itr != 0 and itr % SAVE_INTERVAL == 0:
                checkpoints.save(itr)
            if val_tasks is not None and itr != 0 and itr % val_interval == 0:
                val = algo.evaluate(next(val_tasks), num_steps)
                val_scalars = _to_scalars(val, config.classification)
                if writer is not None:
                    with writer.as_default(step=itr):
                        for tag, value in val_scalars.items():
                            tf.summary.scalar("metaval_" + tag, value)
                print(f"Validation results: {float(val[key1])}, {float(val[key])}",
                      flush=True)
            progress.update(itr)
    except KeyboardInterrupt:
        progress.close()
        if itr >= resume_itr:
            path = checkpoints.save(itr)
            print(f"Interrupted after iteration {itr}; saved {path}. Run the same command to resume.")
        raise
    progress.close()
    if itr >= resume_itr:
        path = checkpoints.save(itr)
        print(f"Saved {path}")
    if writer is not None:
        writer.flush()
    return history


# ======================================================================= test
def test(config: Config, algo, directory: str) -> Dict[str, np.ndarray]:
    """The original test: 600 tasks, meta-batch 1, seeds 1.

    Records the query accuracy (MSE for sinusoid) before adaptation and after
    each of `test_num_updates` steps, prints means, standard deviations and
    95% intervals, and writes `test_ubs{K}_stepsize{lr}.csv` and `.pkl`.

    Returns:
      `{'values': [tasks, steps+1], 'means', 'stds', 'ci95', 'csv', 'pkl'}`.
    """
    split = "test" if config.test_set else "val"
    tasks = make_tasks(config, split, TEST_SEED)
    num_steps = config.num_steps_reported
    rows = []
    progress = _Progress(config.num_test_tasks, 0, config.progress)
    for i, batch in enumerate(tasks.batches(1, config.num_test_tasks)):
        r = algo.evaluate(batch, num_steps)
        if config.classification:
            rows.append(np.concatenate([[r["total_accuracy1"]], r["total_accuracies2"]]))
        else:
            rows.append(np.concatenate([[r["total_loss1"]], r["total_losses2"]]))
        progress.update(i)
    progress.close()
    values = np.array(rows)
    means, stds = values.mean(0), values.std(0)
    ci95 = 1.96 * stds / np.sqrt(len(values))
    print("Mean validation accuracy/loss, stddev, and confidence intervals")
    print((means, stds, ci95))
    os.makedirs(directory, exist_ok=True)
    stem = os.path.join(directory, config.test_file_stem())
    with open(stem + ".pkl", "wb") as f:
        pickle.dump({"mses": values}, f)
    with open(stem + ".csv", "w", newline="") as f:
        writer = csv.writer(f, delimiter=",")
        writer.writerow([f"update{i}" for i in range(len(means))])
        writer.writerow(means)
        writer.writerow(stds)
        writer.writerow(ci95)
    print(f"Wrote {stem}.csv and {stem}.pkl")
    out = {"values": values, "means": means, "stds": stds, "ci95": ci95, "csv": stem + ".csv", "pkl": stem + ".pkl"}
    if config.datasource == "sinusoid":
        from maml_tf.plotting import plot_sinusoid  # matplotlib only when needed.
        out["figure"] = plot_sinusoid(config, algo, os.path.join(directory, config.test_file_stem() + ".png"))
        print(f"Wrote {out['figure']}")
    return out


# ======================================================================== run
def run(config: Config):
    """Train or test as `config` says (the original `main()`)."""
    config.validate()
    configure_threads(config)
    tf.keras.utils.set_random_seed(config.seed)
    algo = build_algorithm(config)
    directory = experiment_dir(config)
    checkpoints = Checkpoints(algo, directory)
    resume_itr = 0
    if config.import_checkpoint:
        from maml_tf.tf1_checkpoint import load_tf1_checkpoint
        try:
            load_tf1_checkpoint(algo.model, config.import_checkpoint)
        except ValueError as e:
            raise TrainingError(f"--import_checkpoint={config.import_checkpoint}: {e}") from None
        print(f"Imported the original's checkpoint {config.import_checkpoint}")
    elif config.resume or not config.train:
        path = checkpoints.path(config.test_iter)
        if path:
            print(f"Restoring model weights from {path}")
            resume_itr = checkpoints.restore(path)
        elif not config.train:
            raise TrainingError(
                f"No checkpoint in {directory} to test. Train first with the same flags (the folder name comes "
                f"from them), or check --logdir; folders there: {_listdir(config.logdir)}.")
    if config.train:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(dataclasses.asdict(config), f, indent=1)
        result = train(config, algo, checkpoints, resume_itr)
    else:
        result = test(config, algo, directory)
    if config.export_checkpoint:
        from maml_tf.tf1_checkpoint import export_tf1_checkpoint
        print(f"Exported {export_tf1_checkpoint(algo.model, config.export_checkpoint)} (original TF1 format)")
    return result


def _listdir(path: str):
    return sorted(os.listdir(path)) if os.path.isdir(path) else "none (it does not exist)"
