"""The plain configuration object of a run: the original flags, the port's own, and the algorithm's options.

`main.py` builds its flags from these fields (and from each registered
algorithm's options dataclass, as `--<prefix>_<name>`) and turns them into a
`Config`; nothing below `main.py` reads flags. Field names are the original
flag names. Quantities that the original computed inside `main()` (the inner
steps reported, the experiment folder's name) are methods here, so that the
training loop, the tests and the CLI agree on them. No TensorFlow import.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

from maml_tf import algorithms
from maml_tf.data import DATASOURCES
from maml_tf.network_specs import NetworkSpec, network_spec
from maml_tf.options import AlgorithmOptions, ConfigError, option

__all__ = ["Config", "ConfigError"]

NORMS = ("batch_norm", "layer_norm", "None")


@dataclasses.dataclass(init=False)
class Config:
    """Every option of a run. Defaults are the original `main.py` defaults.

    `Config(**kwargs)` takes the fields below, and the selected algorithm's
    options either as `options=` or flat with their flag prefix
    (`Config(algorithm="imaml", imaml_lam=2.0)`); prefixed options of other
    registered algorithms are ignored.
    """

    # Dataset / method (the original's).
    datasource: str = option("sinusoid", "sinusoid, bmaml_sinusoid, sine_line, multimodal_regression (regression), "
                                         "omniglot or miniimagenet (docs/data.md)", choices=tuple(DATASOURCES))
    num_classes: int = option(5, "number of classes used in classification (e.g. 5-way classification).")
    baseline: Optional[str] = option(None, "oracle, or None")
    algorithm: str = option(algorithms.DEFAULT, "meta-learning algorithm (docs/algorithms/).",
                            choices=tuple(algorithms.ALGORITHMS))
    # Training.
    pretrain_iterations: int = option(0, "number of pre-training iterations.")
    metatrain_iterations: int = option(15000, "number of metatraining iterations.")
    meta_batch_size: int = option(25, "number of tasks sampled per meta-update")
    meta_lr: float = option(0.001, "the outer (meta) optimiser's step size.")
    clip_norm: float = option(0.0, "MAML and its variants: clip the meta-gradient to this global norm before the "
                                   "outer update (0: not clipped, as the original; MMAML's authors clip their MAML "
                                   "baselines to 2; MMAML: --mmaml_clip_norm).")
    update_batch_size: int = option(5, "number of examples used for inner gradient update (K for K-shot learning).")
    update_lr: float = option(1e-3, "step size alpha for inner gradient update.")
    num_updates: int = option(1, "number of inner gradient updates during training.")
    # Model.
    norm: str = option("batch_norm", "batch_norm, layer_norm, or None", choices=NORMS)
    num_filters: int = option(64, "number of filters for conv nets -- 32 for miniimagenet, 64 for omniglot.")
    conv: bool = option(True, "whether or not to use a convolutional network, only applicable in some cases")
    max_pool: bool = option(False, "Whether or not to use max pooling rather than strided convolutions")
    stop_grad: bool = option(False, "if True, do not use second derivatives in meta-optimization (for speed)")
    # Logging, saving, testing.
    log: bool = option(True, "if false, do not log summaries, for debugging code.")
    logdir: str = option("/tmp/data", "directory for summaries and checkpoints.")
    resume: bool = option(True, "resume training if there is a model available")
    train: bool = option(True, "True to train, False to test.")
    test_iter: int = option(-1, "iteration to load model (-1 for latest model)")
    test_set: bool = option(False, "Set to true to test on the test set, False for the validation set.")
    train_update_batch_size: int = option(-1, "number of examples used for gradient update during training "
                                              "(use if you want to test with a different number).")
    train_update_lr: float = option(-1.0, "value of inner gradient step step during training. "
                                          "(use if you want to test with a different value)")
    # Port-only options.
    seed: int = option(0, "seed of the training task sampler and the weight initialisers.")
    num_modes: int = option(2, "multimodal_regression: task modes, the first N of sinusoid, line, quadratic, tanh, "
                               "l1-norm (MMAML's 2, 3 and 5).")
    task_mode: int = option(-1, "multimodal_regression: draw tasks of this mode only (0-based, as --num_modes "
                                "orders them; one network of Multi-MAML); -1: every mode in turn.")
    num_test_tasks: int = option(600, "tasks evaluated with --train=False (the original uses 600).")
    data_dir: str = option("data", "folder holding omniglot_resized/ and miniImagenet/ (the original's ./data).")
    omniglot_source: str = option("folder", "read Omniglot from data_dir/omniglot_resized or from "
                                            "tensorflow-datasets.", choices=("folder", "tfds"))
    tfds_data_dir: Optional[str] = option(None, "tensorflow-datasets folder (omniglot_source=tfds).")
    progress: bool = option(True, "show progress: a bar on a terminal, else a line with the rate every minute.")
    tf_log: bool = option(False, "show TensorFlow's own log lines (start-up notices, C++ warnings).")
    import_checkpoint: Optional[str] = option(
        None, "start from (or, with --train=False, evaluate) a TF1 checkpoint written by the original code, "
              "e.g. logs/miniimagenet1shot/.../model59000.")
    export_checkpoint: Optional[str] = option(None, "after training or testing, write the weights as a TF1 "
                                                    "checkpoint the original code can restore.")
    # Epochs: validation on many tasks and the best checkpoints (MAML++'s protocol; any algorithm).
    epoch_iterations: int = option(0, "iterations per epoch; after each, the model is validated on --val_tasks "
                                      "tasks and its checkpoint kept if among the --keep_best best (0: the "
                                      "algorithm's epochs: 500 for maml++, none for the others).")
    val_tasks: int = option(600, "validation tasks at the end of each epoch (the same tasks every epoch).")
    keep_best: int = option(5, "epoch checkpoints kept, the best by validation accuracy (MAML++: "
                               "max_models_to_save).")
    test_ensemble: int = option(3, "with epochs, --train=False also tests the ensemble of the best N epoch "
                                   "checkpoints (mean logits) and the best one alone (0: neither).")
    # Execution (the results are the same with any of these but --mixed_precision, which rounds to float16).
    batch_tasks: bool = option(True, "run a meta-batch's tasks at once (grouped convolutions, batched matmuls) "
                                     "where the algorithm and network allow it and it was faster (see "
                                     "--batched_conv_max_support); False: one by one with tf.map_fn, as the "
                                     "original.")
    batched_conv_max_support: int = option(10, "with --batch_tasks: conv nets run task-batched only when a task "
                                               "has fewer support examples than this (0: always); larger tasks "
                                               "were faster one by one.")
    task_groups: int = option(0, "with --batch_tasks: groups of tasks run in parallel; 0: two per CPU core "
                                 "(1 on a GPU or with --jit_compile).")
    intra_op_threads: int = option(1, "threads each TensorFlow op may use; 1 (default) runs independent ops "
                                      "(tasks) on separate cores instead, faster on a CPU; 0: TensorFlow's default.")
    jit_compile: bool = option(False, "XLA-compile the train and evaluation steps (faster for the small sinusoid "
                                      "network, slower for conv nets on a CPU: benchmarks/README.md).")
    recompute_inner_steps: bool = option(False, "MAML, Meta-SGD, ANIL, MAML++, LLAMA, MMAML: take the meta-gradient "
                                                "by recomputing each inner step in the backward pass: memory flat "
                                                "in --num_updates for about one more forward pass per step (same "
                                                "results; tasks run one at a time).")
    mixed_precision: bool = option(False, "compute in float16 with float32 variables, losses, fast-weight updates "
                                          "and batch-norm moments, and dynamic loss scaling (for GPUs; results "
                                          "differ from float32 by float16 rounding).")
    distribute: str = option("none", "train on several devices: mirrored (every GPU of this host, or "
                                     "--distribute_devices) or multi_worker (the hosts of TF_CONFIG); each replica "
                                     "runs an equal share of a meta-batch's tasks (docs/distributed.md).",
                             choices=("none", "mirrored", "multi_worker"))
    distribute_devices: str = option("", "with --distribute=mirrored: the devices, comma-separated (e.g. "
                                         "/gpu:0,/gpu:1); /cpu:N past the first CPU are made logical CPU devices, to "
                                         "try a distributed run on a CPU. Default: every GPU (else the CPU).")
    # The selected algorithm's own options (`maml_tf.algorithms.options`); flags `--<prefix>_<name>`.
    options: AlgorithmOptions = dataclasses.field(default=None, metadata={"flag": False})

    def __init__(self, **kwargs):
        # Flags given explicitly on the command line (`maml_tf.cli`): a shared flag the algorithm does not use stops.
        self.given = frozenset(kwargs.pop("given", ()))
        options = kwargs.pop("options", None)
        for f in dataclasses.fields(self):
            if f.name != "options":
                setattr(self, f.name, kwargs.pop(f.name, f.default))
        try:
            self.algorithm = algorithms.canonical(self.algorithm)  # An alias (e.g. metasgd) -> its registry name.
        except ValueError:
            pass  # `validate` says what is allowed.
        entry = algorithms.ALGORITHMS.get(self.algorithm)
        if entry is not None:
            mine = {k[len(entry.prefix) + 1:]: kwargs.pop(k) for k in list(kwargs) if k.startswith(entry.prefix + "_")}
            options = options or entry.options(**mine)
            options.flag_prefix = entry.prefix  # The registry supplies the flags' prefix.
        prefixes = tuple(e.prefix + "_" for e in algorithms.ALGORITHMS.values())
        unknown = [k for k in kwargs if not k.startswith(prefixes)]
        if unknown:
            raise TypeError(f"Config got unexpected options: {', '.join(unknown)}.")
        self.options = options

    # ----------------------------------------------------------------- checks
    def validate(self) -> "Config":
        """Raises `ConfigError` for values the original would crash or misbehave on."""
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f"--{f.name} must be one of {', '.join(choices)}; got {getattr(self, f.name)!r}.")
        if self.baseline not in (None, "oracle"):
            raise ConfigError(f"--baseline must be 'oracle' or unset; got {self.baseline!r}.")
        if self.baseline == "oracle" and self.datasource != "sinusoid":
            raise ConfigError("--baseline=oracle needs --datasource=sinusoid (it appends amplitude and phase to x).")
        for name in ("num_classes", "meta_batch_size", "update_batch_size", "num_filters", "num_test_tasks",
                     "val_tasks"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1; got {getattr(self, name)}.")
        for name in ("task_groups", "intra_op_threads", "batched_conv_max_support", "epoch_iterations", "keep_best",
                     "test_ensemble"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be 0 or more; got {getattr(self, name)}.")
        for name in ("pretrain_iterations", "metatrain_iterations"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be non-negative; got {getattr(self, name)}.")
        if self.num_updates < 1:
            raise ConfigError(f"--num_updates must be at least 1; got {self.num_updates}.")
        for name in ("meta_lr", "update_lr"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ConfigError(f"--{name} must be a finite non-negative number; got {getattr(self, name)}.")
        if self.test_iter < -1 or self.test_iter == 0:
            raise ConfigError(f"--test_iter must be -1 (the latest checkpoint) or positive; got {self.test_iter}.")
        if self.train_update_batch_size < -1 or self.train_update_batch_size == 0:
            raise ConfigError("--train_update_batch_size must be -1 (same as --update_batch_size) or positive.")
        if not self.options.pretraining and (self.pretrain_iterations or self.baseline):
            raise ConfigError(f"--pretrain_iterations and --baseline need MAML's pretraining step, which "
                              f"--algorithm={self.algorithm} does not have.")
        if not 1 <= self.num_modes <= 5:
            raise ConfigError(f"--num_modes must be 1 to 5 (sinusoid, line, quadratic, tanh, l1-norm); got "
                              f"{self.num_modes}.")
        if not -1 <= self.task_mode < self.num_modes:
            raise ConfigError(f"--task_mode must be -1 (every mode) or a mode below --num_modes={self.num_modes}; "
                              f"got {self.task_mode}.")
        if self.task_mode != -1 and self.datasource != "multimodal_regression":
            raise ConfigError("--task_mode needs --datasource=multimodal_regression.")
        if not (math.isfinite(self.clip_norm) and self.clip_norm >= 0):
            raise ConfigError(f"--clip_norm must be a finite non-negative number; got {self.clip_norm}.")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name, instead in self.options.unused_shared_flags.items():
            if name in self.given or (not defaults[name] and getattr(self, name)):
                raise ConfigError(f"--{name} is not used by --algorithm={self.algorithm}: {instead}.")
        if self.recompute_inner_steps and not self.options.recomputes:
            users = ", ".join(k for k, e in algorithms.ALGORITHMS.items() if e.options.recomputes)
            raise ConfigError(f"--recompute_inner_steps applies to MAML's inner loop ({users}), not to "
                              f"--algorithm={self.algorithm}.")
        if self.recompute_inner_steps and self.mixed_precision:
            raise ConfigError("--recompute_inner_steps does not support --mixed_precision (loss scaling).")
        if self.distribute != "none":
            reason = self.options.not_distributable
            if reason:
                raise ConfigError(f"--distribute: --algorithm={self.algorithm} cannot be split across replicas: "
                                  f"{reason}.")
            for name in ("jit_compile", "mixed_precision"):
                if getattr(self, name):
                    raise ConfigError(f"--{name} is not supported with --distribute.")
        if self.distribute_devices and self.distribute != "mirrored":
            raise ConfigError("--distribute_devices needs --distribute=mirrored.")
        if self.network_spec.needs_max_pool and self.conv and not self.max_pool:
            raise ConfigError(f"{self.datasource}'s conv net flattens a 5x5 map and needs --max_pool=True "
                              "(the original assumes it).")
        self.options.validate(self)
        return self

    def flat(self) -> dict:
        """Every field, the algorithm's options as `<prefix>_<name>` (the flags' names)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "options"}
        prefix = algorithms.ALGORITHMS[self.algorithm].prefix if self.algorithm in algorithms.ALGORITHMS else None
        if prefix and self.options is not None:
            out.update({f"{prefix}_{k}": v for k, v in dataclasses.asdict(self.options).items()})
        return out

    # --------------------------------------------------------------- derived
    @property
    def datasource_spec(self):
        """The registry entry of `datasource` (`maml_tf.data.Datasource`)."""
        return DATASOURCES[self.datasource]

    @property
    def network_spec(self) -> NetworkSpec:
        """The original network's settings for `datasource` (`maml_tf.network_specs`)."""
        return network_spec(self.datasource)

    def support_per_class(self, split: str) -> int:
        """Support (training) examples per class of a task of `split` (K, unless the algorithm trains on others)."""
        if split == "train":
            return self.options.training_shots(self) or self.update_batch_size
        return self.update_batch_size

    @property
    def classification(self) -> bool:
        return self.datasource_spec.classification

    @property
    def num_ways(self) -> int:
        """N: classes per task (1 for regression, as in the original)."""
        return self.num_classes if self.classification else 1

    @property
    def test_num_updates(self) -> int:
        """Inner steps reported, as chosen in the original `main()`."""
        own = self.options.test_num_updates(self)
        training, testing = self.datasource_spec.test_num_updates
        return own or (training if self.train else testing)

    @property
    def epoch_length(self) -> int:
        """Iterations per epoch (0: no epochs)."""
        return self.epoch_iterations or self.options.epoch_iterations(self)

    @property
    def num_steps_reported(self) -> int:
        """The original graph builds `max(test_num_updates, num_updates)` steps."""
        return max(self.test_num_updates, self.num_updates)

    @property
    def num_query_per_class(self) -> int:
        """K query points (15 for MiniImagenet training, as the original)."""
        if self.train and self.datasource_spec.train_query_per_class:
            return self.datasource_spec.train_query_per_class
        return self.update_batch_size

    @property
    def first_order(self) -> bool:
        return self.stop_grad

    @property
    def clip_value(self) -> Optional[float]:
        """Elementwise meta-gradient clipping: the original clips MiniImagenet only."""
        return self.datasource_spec.clip_value

    @property
    def effective_train_update_batch_size(self) -> int:
        return self.update_batch_size if self.train_update_batch_size == -1 else self.train_update_batch_size

    @property
    def effective_train_update_lr(self) -> float:
        return self.update_lr if self.train_update_lr == -1 else self.train_update_lr

    @property
    def effective_pretrain_iterations(self) -> int:
        # The original oracle baseline moves all meta-training into pretraining.
        if self.baseline == "oracle":
            return self.pretrain_iterations + self.metatrain_iterations
        return self.pretrain_iterations

    @property
    def effective_metatrain_iterations(self) -> int:
        return 0 if self.baseline == "oracle" else self.metatrain_iterations

    def exp_string(self) -> str:
        """The experiment folder name, built exactly as the original `main()`."""
        s = (f"cls_{self.num_classes}.mbs_{self.meta_batch_size}.ubs_{self.effective_train_update_batch_size}"
             f".numstep{self.num_updates}.updatelr{_py2_float(self.effective_train_update_lr)}")
        if self.num_filters != 64:
            s += f"hidden{self.num_filters}"
        if self.max_pool:
            s += "maxpool"
        if self.stop_grad:
            s += "stopgrad"
        if self.baseline:
            s += self.baseline
        s += {"batch_norm": "batchnorm", "layer_norm": "layernorm", "None": "nonorm"}[self.norm]
        if self.clip_norm:  # Port-only.
            s += f".clipnorm{self.clip_norm:g}"
        if self.datasource == "multimodal_regression":  # Port-only: one folder per task distribution.
            s += f".modes{self.num_modes}" + (f".mode{self.task_mode}" if self.task_mode >= 0 else "")
        if not self.options.original:  # Port-only: other algorithms get their own folder; MAML the original's.
            s += f".{self.algorithm}" + self.options.exp_suffix(self)
        return s

    def test_file_stem(self) -> str:
        """`test_ubs{K}_stepsize{lr}`, the original name of the test outputs."""
        return f"test_ubs{self.update_batch_size}_stepsize{_py2_float(self.update_lr)}" + self.options.test_suffix(self)


def _py2_float(x: float) -> str:
    """`str(x)` as the original's flags produced it (floats always print as floats)."""
    return str(float(x))
