"""Epochs: validation on many tasks at the end of each epoch and the best epochs' checkpoints (MAML++'s protocol,
for any algorithm)."""

from __future__ import annotations

import json
import math
import os

import tensorflow as tf

from maml_tf.config import Config
from maml_tf.data import TEST_SEED, make_tasks
from maml_tf.training.checkpoints import read_json


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
        self.records = [r for r in read_json(self.path).get("epochs", []) if r["iteration"] <= resume_itr]
        self.higher_is_better = config.classification
        self.seconds = self.records[-1]["train_seconds"] if self.records else 0.0

    def validate(self) -> float:
        """Mean query accuracy (MSE) over the `--val_tasks` validation tasks at the meta-objective's step (after
        `num_updates` steps for MAML; an algorithm that reports one step, such as Reptile, at that one)."""
        config = self.config
        size, key = config.meta_batch_size, "objective_metric" if config.classification else "objective_loss"
        total, left = 0.0, config.val_tasks
        for batch in make_tasks(config, "val", TEST_SEED).batches(size, math.ceil(left / size)):
            n = min(size, left)  # The last meta-batch is cut to the number of tasks asked for.
            result = self.algo.evaluate(tf.nest.map_structure(lambda t, n=n: t[:n], batch), config.num_updates)
            total, left = total + n * float(result[key]), left - n
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
