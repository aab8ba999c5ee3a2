"""The training and test programs of `main.py`, as the original `main.train`/`main.test`.

`run(config)` builds the network, the algorithm and the task sources from a
`Config`, restores a checkpoint, then trains (`train`) or evaluates on 600
tasks (`test`). Outputs go to `config.logdir/<exp_string>/`: TensorBoard
summaries with the original tags, checkpoints (`model-<iteration>`, with the
Adam state and the iteration), and the test CSV / pickle / sinusoid figure.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import json
import math
import os
import pickle
import signal
import socket
import sys
import threading
import time
from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from maml_tf import algorithms
from maml_tf.config import Config
from maml_tf.core import distribute as distribute_lib
from maml_tf.data import make_tasks
from maml_tf.types import TaskBatch

SUMMARY_INTERVAL = 100
SAVE_INTERVAL = 1000
TEST_SEED = 1  # The original seeds numpy and random with 1 before testing.
# MAML's sinusoid 5-shot MSE after 1, 5 and 10 steps in Finn et al. 2017 (the figures this project compares
# its main job with; docs/results.md).
PAPER_SINUSOID_5SHOT = {1: 0.67, 5: 0.38, 10: 0.35}


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
    cls = algorithms.get(config.algorithm)
    algo = cls.from_config(config, model or cls.build_model(config))
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

    def restore_latest(self, test_iter: int = -1) -> Optional[str]:
        """Restores `--test_iter`'s checkpoint, or the newest intact one (a damaged one is skipped with a
        warning naming it: e.g. a run killed while it saved). Returns the path, or None if there is none."""
        if test_iter > 0:
            path = self.path(test_iter)
            try:
                self.restore(path)
            except Exception as e:  # noqa: BLE001 (TensorFlow raises several kinds for a damaged file)
                raise TrainingError(f"Checkpoint {path} is damaged ({_first_line(e)}); test another --test_iter "
                                    f"(available: {self.available()}).") from None
            return path
        for path in reversed(self.manager.checkpoints):
            try:
                self.restore(path)
                return path
            except Exception as e:  # noqa: BLE001
                print(f"Warning: checkpoint {path} is damaged ({_first_line(e)}); trying an older one.",
                      file=sys.stderr, flush=True)
        return None

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


class Epochs:
    """Validation at the end of each epoch and the best epoch checkpoints (MAML++'s protocol, any algorithm).

    After every `config.epoch_length` iterations the model is evaluated on
    the same `--val_tasks` validation tasks (after `--num_updates` steps), its
    checkpoint written as `epochs/epoch-<n>`, and only the `--keep_best` best
    by validation accuracy (MSE for regression) are kept. `epochs.json` holds
    every epoch's record (the learning curve): epoch, iteration, validation
    score, training seconds so far.
    """

    def __init__(self, config: Config, algo, directory: str, resume_itr: int = 0):
        self.config, self.algo, self.directory = config, algo, directory
        self.path = os.path.join(directory, "epochs.json")
        self.records = [r for r in _read_json(self.path).get("epochs", []) if r["iteration"] <= resume_itr]
        self.higher_is_better = config.classification
        self.seconds = self.records[-1]["train_seconds"] if self.records else 0.0

    def validate(self) -> float:
        """Mean query accuracy (MSE) over the `--val_tasks` validation tasks after `num_updates` steps."""
        config = self.config
        size, key = config.meta_batch_size, "total_accuracies2" if config.classification else "total_losses2"
        total, left = 0.0, config.val_tasks
        for batch in make_tasks(config, "val", TEST_SEED).batches(size, math.ceil(left / size)):
            n = min(size, left)  # The last meta-batch is cut to the number of tasks asked for.
            result = self.algo.evaluate(TaskBatch(*[t[:n] for t in batch]), config.num_updates)
            total, left = total + n * float(result[key][config.num_updates - 1]), left - n
        return total / config.val_tasks

    def end(self, epoch: int, iteration: int, train_seconds: float) -> None:
        """Validates, saves the epoch's checkpoint, drops those past the best `keep_best`, writes the records."""
        score = self.validate()
        self.seconds += train_seconds
        prefix = os.path.join(self.directory, "epochs", f"epoch-{epoch}")
        tf.train.Checkpoint(**self.algo.checkpoint_objects()).write(prefix)
        self.records.append({"epoch": epoch, "iteration": iteration, "val": score,
                             "train_seconds": round(self.seconds, 1), "checkpoint": os.path.basename(prefix)})
        kept = {r["epoch"] for r in self.best(self.config.keep_best)}
        for r in self.records:
            if r["epoch"] not in kept and r.get("checkpoint"):
                for f in tf.io.gfile.glob(os.path.join(self.directory, "epochs", r["checkpoint"]) + ".*"):
                    tf.io.gfile.remove(f)
                r["checkpoint"] = None
        with open(self.path, "w") as f:
            json.dump({"metric": "accuracy" if self.higher_is_better else "mse", "epochs": self.records}, f, indent=1)
        best = self.ranked(self.records)[0]
        what = "accuracy" if self.higher_is_better else "MSE"
        print(f"Epoch {epoch} (iteration {iteration}): validation {what} {score:.4f} on {self.config.val_tasks} "
              f"tasks; best {best['val']:.4f} (epoch {best['epoch']})", flush=True)

    def best(self, n: int) -> list:
        """The `n` best records with a checkpoint on disk, best first."""
        return self.ranked([r for r in self.records if r.get("checkpoint")])[:n]

    def ranked(self, records: list) -> list:
        return sorted(records, key=lambda r: -r["val"] if self.higher_is_better else r["val"])


def _first_line(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


class ExperimentLock:
    """`<experiment>/.lock` while a training runs there: a second training of the same folder stops with one line;
    the lock of a process that no longer runs (on this host) is taken over."""

    def __init__(self, directory: str):
        self.path = os.path.join(directory, ".lock")

    def __enter__(self):
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                host, _, pid = _read(self.path).partition(" ")
                if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                    os.remove(self.path)  # Stale: its process has died.
                    continue
                raise TrainingError(f"Another training (process {pid or '?'} on {host or '?'}) is using "
                                    f"{os.path.dirname(self.path)}; wait for it, or use another --logdir. "
                                    f"If it is not running, delete {self.path}.") from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
            return self
        raise TrainingError(f"Could not take the lock {self.path}.")

    def __exit__(self, *exc):
        if os.path.exists(self.path):
            os.remove(self.path)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    if "total_objective_term" in results:  # LLAMA's eta/2 log det H, added to the query loss.
        out["Objective term"] = float(results["total_objective_term"])
    return out


class _Progress:
    """Progress of a long loop: a one-line bar on a terminal; elsewhere (nohup, a log file) a line with the rate
    and ETA within the first `first_s` seconds, then every `every_s` seconds. The rate is the recent one (the
    last `window_s` seconds), not the average since start-up, which tracing and data loading drag down."""

    def __init__(self, total: int, enabled: bool, first_s: float = 20.0, every_s: float = 60.0,
                 window_s: float = 60.0):
        self.total = total
        self.terminal = enabled and sys.stderr.isatty()
        self.lines = enabled and not self.terminal
        self.first_s, self.every_s, self.window_s = first_s, every_s, window_s
        self.last = time.time()
        self.printed = False
        self.samples = collections.deque()  # (time, iterations done) since the first finished iteration.

    def rate(self, itr: Optional[int] = None) -> float:
        """Iterations per second over the recent window (`itr`: the last finished 0-based iteration)."""
        now = time.time()
        if itr is not None:
            self._sample(now, itr + 1)
        if len(self.samples) < 2:
            return 0.0
        t_old, n_old = self.samples[0]
        t_new, n_new = self.samples[-1]
        return (n_new - n_old) / max(t_new - t_old, 1e-9)

    def _sample(self, now: float, done: int) -> None:
        if not self.samples or done != self.samples[-1][1]:
            self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[1][0] > self.window_s:
            self.samples.popleft()

    def eta(self, itr: int) -> str:
        rate = self.rate(itr)
        if rate <= 0:
            return "unknown"
        return time.strftime("%H:%M:%S", time.gmtime((self.total - itr - 1) / rate))

    def update(self, itr: int):
        now = time.time()
        self._sample(now, itr + 1)
        if self.terminal and now - self.last >= 0.5:
            self.last = now
            frac = (itr + 1) / max(self.total, 1)
            sys.stderr.write(f"\r[{'#' * int(30 * frac):<30}] {itr + 1}/{self.total} {self.rate():.1f} it/s "
                             f"ETA {self.eta(itr)}")
            sys.stderr.flush()
        elif (self.lines and len(self.samples) > 1
              and now - self.last >= (self.every_s if self.printed else self.first_s)):
            self.last, self.printed = now, True
            print(f"[{itr + 1}/{self.total}: {self.rate():.2f} it/s, ETA {self.eta(itr)}]", flush=True)

    def close(self):
        if self.terminal:
            sys.stderr.write("\n")


class _StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM during training: finish the running iteration, save, stop. A second Ctrl-C
    stops at once (the last checkpoint stays)."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self.previous = {}
        if threading.current_thread() is threading.main_thread():  # Only there can Python handle signals.
            self.previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def train(config: Config, algo, checkpoints: Checkpoints, resume_itr: int = 0) -> Dict[str, list]:
    """The original training loop: pretraining, then meta-training.

    Prints every 1000 iterations (sinusoid) or 100 (images) the mean pre- and
    post-update loss (accuracy for classification) of the summary iterations
    since the last print, validates every 5 print intervals (images), writes
    summaries every 100 iterations and checkpoints every 1000 and at the end.

    The task streams are a function of the seed and the iteration: a run
    resumed from iteration i (after Ctrl-C, or a kill and its last
    checkpoint) sees the batches the uninterrupted run saw from i on, and
    ends with the same weights. Ctrl-C or SIGTERM finishes the running
    iteration, saves and stops.

    Returns:
      History: `iteration`, `pre`, `post` of every summary iteration.
    """
    print_interval = config.datasource_spec.print_interval
    val_interval = 5 * print_interval
    pretrain, total = config.effective_pretrain_iterations, (config.effective_pretrain_iterations
                                                              + config.effective_metatrain_iterations)
    writer = tf.summary.create_file_writer(checkpoints.directory) if config.log else None
    train_tasks = make_tasks(config, "train", config.seed).batches(config.meta_batch_size, start=resume_itr)
    val_tasks = None
    if config.classification:  # The original validates image datasources only.
        done_vals = max(resume_itr - 1, 0) // val_interval  # Validation batches the run drew before resume_itr.
        val_tasks = make_tasks(config, "val", config.seed + 1).batches(config.meta_batch_size, start=done_vals)
    num_steps = config.num_steps_reported
    key = "objective_metric" if config.classification else "objective_loss"
    key1 = "total_accuracy1" if config.classification else "total_loss1"
    history = {"iteration": [], "pre": [], "post": []}
    prelosses, postlosses, skipped = [], [], 0
    epoch_length = config.epoch_length
    epochs = Epochs(config, algo, checkpoints.directory, resume_itr) if epoch_length else None
    epoch_start = time.time()
    progress = _Progress(total, config.progress)
    print(f"Training {config.exp_string()} from iteration {resume_itr} to {total} "
          f"({pretrain} pretraining); outputs in {checkpoints.directory}", flush=True)
    done = resume_itr - 1  # The last iteration whose update has been applied.
    with _StopRequest() as stop:
        for itr in range(resume_itr, total):
            if stop.requested:
                break
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
            done = itr
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
                print(f"{label}: {means}  [{progress.rate(itr):.1f} it/s, ETA {progress.eta(itr)}{note}]",
                      flush=True)
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
                print(f"Validation results: {float(val[key1])}, {float(val[key])}", flush=True)
            if epochs is not None and itr >= pretrain and (itr + 1 - pretrain) % epoch_length == 0:
                progress.close()
                epochs.end((itr + 1 - pretrain) // epoch_length, itr + 1, time.time() - epoch_start)
                epoch_start = time.time()
            progress.update(itr)
    progress.close()
    if writer is not None:
        writer.flush()
    if done >= resume_itr:
        path = checkpoints.save(done)
        if stop.requested:
            print(f"Interrupted after iteration {done}; saved {path}. Run the same command to resume.", flush=True)
        else:
            print(f"Saved {path}")
    if stop.requested:
        raise KeyboardInterrupt
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
    progress = _Progress(config.num_test_tasks, config.progress)
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
    print((means, stds, ci95))  # As the original prints it; the table says the same with labels.
    medians = np.median(np.where(np.isnan(values), np.inf, values), 0)  # A diverged (NaN) task counts as worst.
    what = "accuracy" if config.classification else "MSE"
    paper = PAPER_SINUSOID_5SHOT if (config.datasource == "sinusoid" and config.algorithm == "maml"
                                     and config.update_batch_size == 5 and not config.baseline) else None
    print(f"\nQuery {what} after each inner step ({len(values)} tasks of the {split} split; step 0: before "
          f"adaptation):\n\n| step | mean | 95% interval | median |" + (" paper |\n|---|---|---|---|---|" if paper else
                                                                         "\n|---|---|---|---|"))
    for j in range(len(means)):
        row = f"| {j} | {means[j]:.4g} | {means[j] - ci95[j]:.4g} to {means[j] + ci95[j]:.4g} | {medians[j]:.4g} |"
        print(row + (f" {paper.get(j, '')} |" if paper else ""))
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
    if config.test_ensemble and os.path.exists(os.path.join(directory, "epochs.json")):
        out["ensemble"] = test_ensemble(config, algo, directory, split)
    if config.datasource == "sinusoid" and not hasattr(algo, "adapt_particles"):  # A set of functions: see below.
        from maml_tf.plotting import plot_sinusoid  # matplotlib only when needed.
        out["figure"] = plot_sinusoid(config, algo, os.path.join(directory, config.test_file_stem() + ".png"))
        print(f"Wrote {out['figure']}")
    if hasattr(algo, "predictive") and config.baseline != "oracle":
        out.update(test_predictive(config, algo, stem, split))
    return out


def test_predictive(config: Config, algo, stem: str, split: str) -> Dict[str, object]:
    """The predictive distribution's measures (`maml_tf.uncertainty`) on the same tasks as `test`, after as many
    inner steps as training took (`--num_updates`), written to `<stem>.uncertainty.json`; for regression also its
    samples on four tasks (`<stem>.samples.png`)."""
    from maml_tf import uncertainty  # matplotlib only when needed.

    steps, source = config.num_updates, make_tasks(config, split, TEST_SEED)
    if config.classification:
        result = uncertainty.evaluate_classification(algo, list(source.batches(1, config.num_test_tasks)), steps)
        uncertainty.report(result, stem + ".uncertainty.json")
        return {"uncertainty": result}
    tasks = [task for _ in range(config.num_test_tasks) for task in source.sample_tasks(1)]  # As `batches` draws.
    result = uncertainty.evaluate_regression(algo, tasks, steps)
    uncertainty.report(result, stem + ".uncertainty.json")
    shown = max(4, len(getattr(source, "families", ())))  # Tasks of every mode on a multimodal datasource.
    figure = uncertainty.plot_samples(algo, tasks[:shown], stem + ".samples.png", steps,
                                      title=f"{config.algorithm}, {config.datasource}, K={config.update_batch_size}, "
                                            f"{steps} step(s)")
    print(f"Wrote {figure}")
    out = {"uncertainty": result, "samples_figure": figure}
    if hasattr(algo, "task_embedding"):  # MMAML: its task encoder's view of the tasks.
        from maml_tf.plotting import plot_task_embeddings

        out["embeddings_figure"] = plot_task_embeddings(algo, tasks, stem + ".embeddings.png")
        print(f"Wrote {out['embeddings_figure']}")
    return out


def test_ensemble(config: Config, algo, directory: str, split: str) -> Dict[str, object]:
    """MAML++'s evaluation: the `--test_ensemble` best epoch checkpoints by validation score, each adapted to
    the same tasks; the ensemble predicts with the mean of their outputs after the last reported step.

    Prints and writes `<test stem>.ensemble.json`: the ensemble's and the best
    checkpoint's mean query accuracy (MSE) over the tasks with 95% intervals.
    Leaves the last checkpoint evaluated restored.
    """
    epochs = Epochs(config, algo, directory, resume_itr=2 ** 62)
    chosen = epochs.best(config.test_ensemble)
    if not chosen:
        print("No epoch checkpoint to ensemble (--keep_best=0?).")
        return {}
    num_steps = config.num_steps_reported
    batches = list(make_tasks(config, split, TEST_SEED).batches(1, config.num_test_tasks))  # Drawn once for all.
    labels = np.stack([np.asarray(batch.query_y[0]) for batch in batches])
    outputs = []
    for record in chosen:
        tf.train.Checkpoint(**algo.checkpoint_objects()).read(
            os.path.join(directory, "epochs", record["checkpoint"])).expect_partial()
        per_task = []
        for batch in batches:
            results = algo.evaluate(batch, num_steps)
            if "query_outputs" not in results:
                print(f"No ensemble: --algorithm={config.algorithm}'s evaluation does not return its outputs.")
                return {}
            per_task.append(results["query_outputs"][0, -1].numpy())
        outputs.append(np.stack(per_task))

    def score(out):
        if config.classification:
            return (out.argmax(-1) == labels.argmax(-1)).mean(-1)
        return ((out.reshape(labels.shape) - labels) ** 2).mean(-1)

    what = "accuracy" if config.classification else "MSE"
    rows = {"ensemble": score(np.mean(outputs, 0)), "best": score(outputs[0])}
    result = {"epochs": [r["epoch"] for r in chosen], "val": [r["val"] for r in chosen], "steps": num_steps}
    print(f"\nEnsemble of the {len(chosen)} best epochs by validation {what} (epochs "
          f"{', '.join(str(r['epoch']) for r in chosen)}), {len(labels)} tasks of the {split} split, after "
          f"{num_steps} steps:\n\n| model | mean | 95% interval |\n|---|---|---|")
    for name, values in rows.items():
        mean, ci = float(values.mean()), float(1.96 * values.std() / np.sqrt(len(values)))
        result[name] = {"mean": mean, "ci95": ci}
        label = f"best epoch ({chosen[0]['epoch']})" if name == "best" else f"ensemble of {len(chosen)}"
        print(f"| {label} | {mean:.4g} | {mean - ci:.4g} to {mean + ci:.4g} |")
    path = os.path.join(directory, config.test_file_stem() + ".ensemble.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"Wrote {path}")
    return result


# ======================================================================== run
# Flags that may differ when a training resumes: they extend the run, or change logging, speed (same results) or
# where files are. Any other change stops the resume with one line (the checkpoint was trained with the old value).
RESUMABLE_CHANGES = frozenset({
    "metatrain_iterations", "log", "logdir", "resume", "train", "test_iter", "test_set", "num_test_tasks", "data_dir",
    "tfds_data_dir", "progress", "import_checkpoint", "export_checkpoint", "batch_tasks", "batched_conv_max_support",
    "task_groups", "intra_op_threads", "jit_compile", "mixed_precision", "tf_log", "test_ensemble",
    "recompute_inner_steps", "distribute", "distribute_devices"})


def check_resumable(config: Config, directory: str) -> None:
    """Raises `TrainingError` naming the flags that differ from the run stored in `directory`/config.json."""
    stored = _read_json(os.path.join(directory, "config.json"))
    now = config.flat()
    changed = [f"--{k}={now[k]} (the checkpoint's run: {stored[k]})" for k in sorted(set(stored) & set(now))
               if (k not in RESUMABLE_CHANGES or k in config.options.fixed_on_resume) and stored[k] != now[k]]
    if changed:
        raise TrainingError(f"Resuming {directory} with changed flags: {', '.join(changed)}. Resume with the stored "
                            "flags, or start afresh with --resume=False (overwrites its checkpoints) or another "
                            "--logdir.")


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _writable_folder(path: str, flag: str) -> None:
    """Creates `path` if needed; raises `TrainingError` if it cannot be written (before any work is done)."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise TrainingError(f"{flag}: cannot create {path} ({e.strerror}).") from None
    if not os.access(path, os.W_OK):
        raise TrainingError(f"{flag}: cannot write to {path}.")


def run(config: Config):
    """Train or test as `config` says (the original `main()`)."""
    config.validate()
    directory = experiment_dir(config)
    if config.train:
        _writable_folder(directory, f"--logdir={config.logdir}")
    if config.export_checkpoint:
        _writable_folder(os.path.dirname(os.path.abspath(config.export_checkpoint)),
                         f"--export_checkpoint={config.export_checkpoint}")
    configure_threads(config)
    strategy = make_strategy(config) if config.train else None  # Testing runs on one device.
    # Multi-worker: the chief writes the experiment folder; each other worker saves its (equal) copies in a folder
    # of its own, and every worker resumes from the chief's checkpoints.
    own = (directory if strategy is None or distribute_lib.is_chief()
           else os.path.join(directory, f".worker{distribute_lib.worker_index()}"))
    if config.train:
        os.makedirs(own, exist_ok=True)
    tf.keras.utils.set_random_seed(config.seed)
    with strategy.scope() if strategy else contextlib.nullcontext():
        algo = build_algorithm(config)
    # Outside the scope: its iteration counter is a plain variable (under multi_worker a mirrored one would be
    # broadcast from the chief on creation, and the workers create different numbers of them).
    checkpoints = Checkpoints(algo, own)
    chief_checkpoints = checkpoints if own == directory else Checkpoints(algo, directory)
    if strategy is not None:
        distribute_lib.distribute(algo, strategy)
        print(f"Distributed over {strategy.num_replicas_in_sync} replicas ({type(strategy).__name__}): "
              f"{config.meta_batch_size // strategy.num_replicas_in_sync} tasks of each meta-batch on each.")
    with ExperimentLock(own) if config.train else contextlib.nullcontext():
        resume_itr = 0
        if config.import_checkpoint:
            from maml_tf.tf1_checkpoint import load_tf1_checkpoint
            try:
                load_tf1_checkpoint(algo.model, config.import_checkpoint)
            except ValueError as e:
                raise TrainingError(f"--import_checkpoint={config.import_checkpoint}: {e}") from None
            print(f"Imported the original's checkpoint {config.import_checkpoint}")
        elif config.resume or not config.train:
            if config.train and chief_checkpoints.manager.checkpoints:
                check_resumable(config, directory)
            path = chief_checkpoints.restore_latest(config.test_iter)
            if path:
                print(f"Restoring model weights from {path}")
                resume_itr = int(chief_checkpoints.iteration.numpy())
            elif not config.train:
                raise TrainingError(
                    f"No checkpoint in {directory} to test. Train first with the same flags (the folder name comes "
                    f"from them), or check --logdir; folders there: {_listdir(config.logdir)}.")
        if config.train:
            with open(os.path.join(own, "config.json"), "w") as f:
                json.dump(config.flat(), f, indent=1)
            result = train(config, algo, checkpoints, resume_itr)
        else:
            result = test(config, algo, directory)
    if config.export_checkpoint:
        from maml_tf.tf1_checkpoint import export_tf1_checkpoint
        print(f"Exported {export_tf1_checkpoint(algo.model, config.export_checkpoint)} (original TF1 format)")
    return result


def make_strategy(config: Config):
    """The `tf.distribute` strategy of `--distribute` (None: one device); `--distribute_devices` named /cpu:N
    past the first CPU become logical CPU devices (before TensorFlow starts its runtime)."""
    if config.distribute == "none":
        return None
    devices = [d.strip() for d in config.distribute_devices.split(",") if d.strip()] or None
    cpus = [int(d.rsplit(":", 1)[1]) for d in devices or [] if d.lower().startswith("/cpu:")]
    if cpus and max(cpus) > 0:
        physical = tf.config.list_physical_devices("CPU")[0]
        logical = tf.config.get_logical_device_configuration(physical) or [None]
        if len(logical) <= max(cpus):
            try:
                tf.config.set_logical_device_configuration(
                    physical, [tf.config.LogicalDeviceConfiguration()] * (max(cpus) + 1))
            except RuntimeError:
                raise TrainingError("--distribute_devices: the logical CPU devices cannot be made once TensorFlow "
                                    "is running.") from None
    try:
        strategy = distribute_lib.make_strategy(config.distribute, devices)
    except (ValueError, RuntimeError) as e:
        raise TrainingError(f"--distribute={config.distribute}: {_first_line(e)}") from None
    try:
        distribute_lib.check_divisible(config.meta_batch_size, strategy.num_replicas_in_sync)
    except ValueError as e:
        raise TrainingError(f"--distribute={config.distribute}: {e}") from None
    return strategy


def _listdir(path: str):
    return sorted(os.listdir(path)) if os.path.isdir(path) else "none (it does not exist)"
