"""The programs of `main.py`, as the original `main()`: build, restore, then train or test.

`run(config)` builds the network, the algorithm and the task sources from a
`Config`, restores a checkpoint, then trains (`maml_tf.training.loop`) or
evaluates on 600 tasks (`maml_tf.training.evaluation`). Outputs go to
`config.logdir/<exp_string>/`: TensorBoard summaries with the original tags,
checkpoints (`model-<iteration>`, with the Adam state and the iteration),
and the test CSV / pickle / figures. Nothing here names an algorithm: the
registry builds it and it declares what it offers.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

import tensorflow as tf

from maml_tf import algorithms
from maml_tf.config import Config
from maml_tf.core import distribute as distribute_lib
from maml_tf.data import make_tasks, source_state
from maml_tf.tf1_checkpoint import export_tf1_checkpoint, load_tf1_checkpoint
from maml_tf.training.checkpoints import Checkpoints, ExperimentLock, TrainingError, first_line, read_json
from maml_tf.training.evaluation import test
from maml_tf.training.loop import train

__all__ = ["Checkpoints", "TrainingError", "build_algorithm", "experiment_dir", "run"]


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


# Flags that may differ when a training resumes: they extend the run, or change logging, speed (same results) or
# where files are. Any other change stops the resume with one line (the checkpoint was trained with the old value).
RESUMABLE_CHANGES = frozenset({
    "metatrain_iterations", "log", "logdir", "resume", "train", "test_iter", "test_set", "num_test_tasks", "data_dir",
    "tfds_data_dir", "progress", "import_checkpoint", "export_checkpoint", "batch_tasks", "batched_conv_max_support",
    "task_groups", "intra_op_threads", "jit_compile", "mixed_precision", "tf_log", "test_ensemble",
    "recompute_inner_steps", "distribute", "distribute_devices"})


def check_resumable(config: Config, directory: str) -> None:
    """Raises `TrainingError` naming the flags that differ from the run stored in `directory`/config.json."""
    stored = read_json(os.path.join(directory, "config.json"))
    now = config.flat()
    changed = [f"--{k}={now[k]} (the checkpoint's run: {stored[k]})" for k in sorted(set(stored) & set(now))
               if (k not in RESUMABLE_CHANGES or k in config.options.fixed_on_resume) and stored[k] != now[k]]
    if changed:
        raise TrainingError(f"Resuming {directory} with changed flags: {', '.join(changed)}. Resume with the stored "
                            "flags, or start afresh with --resume=False (overwrites its checkpoints) or another "
                            "--logdir.")


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
    # The training task source is built before the checkpoints: one whose batches depend on the learner keeps its
    # random state in them (`maml_tf.data.task_stream`).
    source = make_tasks(config, "train", config.seed) if config.train else None
    extra = source_state(source)
    checkpoints = Checkpoints(algo, own, extra)
    chief_checkpoints = checkpoints if own == directory else Checkpoints(algo, directory, extra)
    if strategy is not None:
        distribute_lib.distribute(algo, strategy)
        print(f"Distributed over {strategy.num_replicas_in_sync} replicas ({type(strategy).__name__}): "
              f"{config.meta_batch_size // strategy.num_replicas_in_sync} tasks of each meta-batch on each.")
    with ExperimentLock(own) if config.train else contextlib.nullcontext():
        resume_itr = 0
        if config.import_checkpoint:
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
            result = train(config, algo, checkpoints, source, resume_itr)
        else:
            result = test(config, algo, directory)
    if config.export_checkpoint:
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
        raise TrainingError(f"--distribute={config.distribute}: {first_line(e)}") from None
    try:
        distribute_lib.check_divisible(config.meta_batch_size, strategy.num_replicas_in_sync)
    except ValueError as e:
        raise TrainingError(f"--distribute={config.distribute}: {e}") from None
    return strategy


def _listdir(path: str):
    return sorted(os.listdir(path)) if os.path.isdir(path) else "none (it does not exist)"
