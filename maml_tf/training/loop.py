"""The training loop of `main.py` (the original `main.train`): it names no algorithm; what it reports beyond the
original's results, an algorithm declares (`MetaLearner.summaries`)."""

from __future__ import annotations

import time
from typing import Dict

import numpy as np
import tensorflow as tf

from maml_tf.config import Config
from maml_tf.data import make_tasks, task_stream
from maml_tf.training.checkpoints import Checkpoints, TrainingError
from maml_tf.training.epochs import Epochs
from maml_tf.training.progress import Progress, StopRequest

SUMMARY_INTERVAL = 100
SAVE_INTERVAL = 1000


def to_scalars(results: Dict, classification: bool, extra: Dict[str, str]) -> Dict[str, float]:
    """A step's results as TensorBoard scalars with the original's tags; `extra`: the algorithm's own results
    (`MetaLearner.summaries`: result key -> tag)."""
    out = {"Pre-update loss": float(results["total_loss1"])}
    for j, value in enumerate(results.get("total_losses2", [])):
        out[f"Post-update loss, step {j + 1}"] = float(value)
    if classification and "total_accuracy1" in results:
        out["Pre-update accuracy"] = float(results["total_accuracy1"])
        for j, value in enumerate(results["total_accuracies2"]):
            out[f"Post-update accuracy, step {j + 1}"] = float(value)
    if "loss_scale" in results:
        out["Loss scale"] = float(results["loss_scale"])
    for key, tag in extra.items():
        if key in results:
            out[tag] = float(results[key])
    return out


def train(config: Config, algo, checkpoints: Checkpoints, source, resume_itr: int = 0) -> Dict[str, list]:
    """The original training loop: pretraining, then meta-training.

    Prints every 1000 iterations (sinusoid) or 100 (images) the mean pre- and
    post-update loss (accuracy for classification) of the summary iterations
    since the last print, validates every 5 print intervals (images), writes
    summaries every 100 iterations and checkpoints every 1000 and at the end.

    `source` is the training task source (`maml_tf.data.task_stream`: the
    loop asks it for each meta-batch and hands it the learner, so that a
    source may sample with adapted weights). A supervised stream is a
    function of the seed and the iteration; a learner-dependent one keeps
    its random state in the checkpoint: either way a run resumed from
    iteration i (after Ctrl-C, or a kill and its last checkpoint) sees the
    batches the uninterrupted run saw from i on, and ends with the same
    weights. Ctrl-C or SIGTERM finishes the running iteration, saves and
    stops.

    Returns:
      History: `iteration`, `pre`, `post` of every summary iteration.
    """
    print_interval = config.datasource_spec.print_interval
    val_interval = 5 * print_interval
    pretrain, total = config.effective_pretrain_iterations, (config.effective_pretrain_iterations
                                                              + config.effective_metatrain_iterations)
    writer = tf.summary.create_file_writer(checkpoints.directory) if config.log else None
    next_batch = task_stream(source, config.meta_batch_size, start=resume_itr)
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
    progress = Progress(total, config.progress)
    print(f"Training {config.exp_string()} from iteration {resume_itr} to {total} "
          f"({pretrain} pretraining); outputs in {checkpoints.directory}", flush=True)
    done = resume_itr - 1  # The last iteration whose update has been applied.
    with StopRequest() as stop:
        for itr in range(resume_itr, total):
            if stop.requested:
                break
            batch = next_batch(algo)
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
                scalars = to_scalars(results, config.classification, algo.summaries)
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
                val_scalars = to_scalars(val, config.classification, algo.summaries)
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
