"""Checkpoints and resume, the experiment folder's lock, and the errors that stop a run with one line."""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Optional

import tensorflow as tf


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, missing checkpoint); the message says why."""


class Checkpoints:
    """The algorithm's state (`algo.checkpoint_objects()`) and the iteration, every `SAVE_INTERVAL` iterations.

    Deliberate difference: the original saves trainable variables only, so
    resuming restarts Adam from zero; here the optimiser state is kept.
    """

    def __init__(self, algo, directory: str, extra: Optional[dict] = None):
        self.iteration = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.objects = {**algo.checkpoint_objects(), **(extra or {})}  # extra: a task source's random state.
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
                raise TrainingError(f"Checkpoint {path} is damaged ({first_line(e)}); test another --test_iter "
                                    f"(available: {self.available()}).") from None
            return path
        for path in reversed(self.manager.checkpoints):
            try:
                self.restore(path)
                return path
            except Exception as e:  # noqa: BLE001
                print(f"Warning: checkpoint {path} is damaged ({first_line(e)}); trying an older one.",
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


def first_line(error: Exception) -> str:
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


def read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}
