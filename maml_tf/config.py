"""The plain configuration object of a run: the original flags plus the port's own.

`main.py` turns absl flags into a `Config`; nothing below `main.py` reads flags.
Field names are the original flag names, so the README's flag table maps one to
one. Derived quantities that the original computed inside `main()` (the number
of inner steps built for reporting, the experiment folder name) live here as
methods so that the training loop, the tests and the CLI agree on them.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

DATASOURCES = ("sinusoid", "omniglot", "miniimagenet")
NORMS = ("batch_norm", "layer_norm", "None")


class ConfigError(ValueError):
    """A configuration that cannot run; the message says what to change."""


@dataclasses.dataclass
class Config:
    """Every option of a run. Defaults are the original `main.py` defaults."""

    # Dataset / method.
    datasource: str = "sinusoid"
    num_classes: int = 5
    baseline: Optional[str] = None
    algorithm: str = "maml"
    # Training.
    pretrain_iterations: int = 0
    metatrain_iterations: int = 15000
    meta_batch_size: int = 25
    meta_lr: float = 0.001
    update_batch_size: int = 5
    update_lr: float = 1e-3
    num_updates: int = 1
    # Model.
    norm: str = "batch_norm"
    num_filters: int = 64
    conv: bool = True
    max_pool: bool = False
    stop_grad: bool = False
    # Logging, saving, testing.
    log: bool = True
    logdir: str = "/tmp/data"
    resume: bool = True
    train: bool = True
    test_iter: int = -1
    test_set: bool = False
    train_update_batch_size: int = -1
    train_update_lr: float = -1.0
    # Port-only options.
    seed: int = 0
    num_test_tasks: int = 600
    data_dir: str = "data"  # Holds omniglot_resized/ and miniImagenet/ (the original's ./data).
    omniglot_source: str = "folder"  # 'folder' (data_dir/omniglot_resized) or 'tfds'.
    tfds_data_dir: Optional[str] = None  # tensorflow-datasets folder for omniglot_source='tfds'.
    progress: bool = True
    # Speed (results are the same either way, but mixed_precision rounds to float16).
    batch_tasks: bool = True  # MAML: a meta-batch's tasks at once (maml_tf.batched) where the network allows.
    batched_conv_max_support: int = 10  # ... conv nets only below this many support examples per task (0: always).
    task_groups: int = 0  # Groups of tasks run in parallel when batched; 0: two per CPU core (1 on a GPU or XLA).
    intra_op_threads: int = 1  # Threads per TensorFlow op; 0: TensorFlow's default (every core).
    jit_compile: bool = False  # XLA-compile the train and evaluation steps.
    mixed_precision: bool = False  # float16 compute (Keras 'mixed_float16'), float32 variables, loss scaling.
    import_checkpoint: Optional[str] = None  # A TF1 checkpoint of the original code to start from.
    export_checkpoint: Optional[str] = None  # Write the final weights as a TF1 checkpoint here.
    # Reptile (--algorithm=reptile): the authors' options and defaults (`openai/supervised-reptile`).
    # Shared flags: --num_classes (classes), --update_batch_size (shots), --meta_batch_size (meta-batch),
    # --metatrain_iterations (meta-iters), --seed.
    reptile_train_shots: int = 0  # Shots per class in training tasks (0: --update_batch_size).
    reptile_inner_batch: int = 5
    reptile_inner_iters: int = 20
    reptile_replacement: bool = False
    reptile_learning_rate: float = 1e-3  # Inner Adam (or SGD) step size.
    reptile_meta_step: float = 0.1
    reptile_meta_step_final: float = 0.1
    reptile_eval_batch: int = 5
    reptile_eval_iters: int = 50
    reptile_weight_decay: float = 1.0
    reptile_transductive: bool = False
    reptile_sgd: bool = False
    reptile_foml: bool = False
    reptile_foml_tail: int = 0  # 0: none.
    # iMAML (--algorithm=imaml): the authors' defaults (`aravindr93/imaml_dev`); shared flags: --meta_lr (outer
    # Adam step size), --meta_batch_size, --metatrain_iterations, --num_classes, --update_batch_size.
    imaml_lam: float = 1.0
    imaml_solver: str = "gd"  # 'gd' or 'hessian_free'.
    imaml_n_steps: int = 16
    imaml_inner_lr: float = 1e-2
    imaml_cg_steps: int = 5
    imaml_cg_damping: float = 1.0
    imaml_lam_damping: float = 10.0
    imaml_hf_cg_steps: int = 5

    # ----------------------------------------------------------------- checks
    def validate(self) -> "Config":
        """Raises `ConfigError` for values the original would crash or misbehave on."""
        from maml_tf import algorithms  # Local import: registry lives there.

        if self.datasource not in DATASOURCES:
            raise ConfigError(f"--datasource must be one of {', '.join(DATASOURCES)}; got {self.datasource!r}.")
        if self.norm not in NORMS:
            raise ConfigError(f"--norm must be one of {', '.join(NORMS)}; got {self.norm!r}.")
        if self.algorithm not in algorithms.ALGORITHMS:
            raise ConfigError(
                f"--algorithm must be one of {', '.join(sorted(algorithms.ALGORITHMS))}; got {self.algorithm!r}.")
        if self.baseline not in (None, "oracle"):
            raise ConfigError(f"--baseline must be 'oracle' or unset; got {self.baseline!r}.")
        if self.baseline == "oracle" and self.datasource != "sinusoid":
            raise ConfigError("--baseline=oracle needs --datasource=sinusoid (it appends amplitude and phase to x).")
        for name in ("num_classes", "meta_batch_size", "update_batch_size", "num_filters", "num_test_tasks"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1; got {getattr(self, name)}.")
        for name in ("task_groups", "intra_op_threads", "batched_conv_max_support"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be 0 or more; got {getattr(self, name)}.")
        for name in ("pretrain_iterations", "metatrain_iterations"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be non-negative; got {getattr(self, name)}.")
        if self.num_updates < 1:
            raise ConfigError(f"--num_updates must be at least 1; got {self.num_updates}.")
        if self.meta_lr < 0 or self.update_lr < 0:
            raise ConfigError("--meta_lr and --update_lr must be non-negative.")
        if self.train_update_batch_size < -1 or self.train_update_batch_size == 0:
            raise ConfigError("--train_update_batch_size must be -1 (same as --update_batch_size) or positive.")
        if self.algorithm != "maml":
            self._validate_other_algorithm()
        if self.datasource == "miniimagenet" and self.conv and not self.max_pool:
            raise ConfigError("MiniImagenet's conv net flattens a 5x5 map and needs --max_pool=True "
                              "(the original assumes it).")
        return self

    def _validate_other_algorithm(self) -> None:
        if self.pretrain_iterations or self.baseline:
            raise ConfigError(f"--pretrain_iterations and --baseline belong to MAML, not --algorithm={self.algorithm}.")
        if self.algorithm == "imaml":
            if self.imaml_solver not in ("gd", "hessian_free"):
                raise ConfigError(f"--imaml_solver must be gd or hessian_free; got {self.imaml_solver!r}.")
            if self.imaml_lam <= 0:
                raise ConfigError(f"--imaml_lam must be positive; got {self.imaml_lam}.")
            if self.imaml_n_steps < 0 or self.imaml_cg_steps < 0 or self.imaml_hf_cg_steps < 1:
                raise ConfigError("--imaml_n_steps and --imaml_cg_steps must be non-negative, --imaml_hf_cg_steps "
                                  "positive.")
        if self.algorithm == "reptile":
            for name in ("reptile_inner_batch", "reptile_inner_iters", "reptile_eval_batch"):
                if getattr(self, name) < 1:
                    raise ConfigError(f"--{name} must be at least 1; got {getattr(self, name)}.")
            if self.reptile_train_shots < 0 or self.reptile_eval_iters < 0 or self.reptile_foml_tail < 0:
                raise ConfigError("--reptile_train_shots, --reptile_eval_iters and --reptile_foml_tail must be "
                                  "non-negative.")
            if self.reptile_foml_tail and not self.reptile_foml:
                raise ConfigError("--reptile_foml_tail needs --reptile_foml=True.")
            if self.reptile_foml_tail >= self.support_per_class("train"):
                raise ConfigError(f"--reptile_foml_tail={self.reptile_foml_tail} must be smaller than the training "
                                  f"shots ({self.support_per_class('train')}, --reptile_train_shots).")
            pool = self.support_per_class("train") * self.num_ways
            if self.reptile_replacement and self.reptile_inner_batch > pool:
                raise ConfigError(f"--reptile_inner_batch={self.reptile_inner_batch} is larger than a training "
                                  f"task ({pool} examples); mini-batches with replacement must fit.")

    # --------------------------------------------------------------- derived
    def support_per_class(self, split: str) -> int:
        """Support (training) examples per class of a task of `split` (K; Reptile trains on its train shots)."""
        if split == "train" and self.algorithm == "reptile" and self.reptile_train_shots:
            return self.reptile_train_shots
        return self.update_batch_size

    @property
    def classification(self) -> bool:
        return self.datasource != "sinusoid"

    @property
    def num_ways(self) -> int:
        """N: classes per task (1 for regression, as in the original)."""
        return self.num_classes if self.classification else 1

    @property
    def test_num_updates(self) -> int:
        """Inner steps reported, as chosen in the original `main()`."""
        if self.datasource == "sinusoid":
            return 5 if self.train else 10
        if self.datasource == "miniimagenet":
            return 1 if self.train else 10
        return 10

    @property
    def num_steps_reported(self) -> int:
        """The original graph builds `max(test_num_updates, num_updates)` steps."""
        return max(self.test_num_updates, self.num_updates)

    @property
    def num_query_per_class(self) -> int:
        """K query points (15 for MiniImagenet training, as the original)."""
        if self.datasource == "miniimagenet" and self.train:
            return 15
        return self.update_batch_size

    @property
    def first_order(self) -> bool:
        return self.stop_grad

    @property
    def clip_value(self) -> Optional[float]:
        """Elementwise meta-gradient clipping: the original clips MiniImagenet only."""
        return 10.0 if self.datasource == "miniimagenet" else None

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
        if self.algorithm != "maml":
            # Port-only: other algorithms get their own folder; MAML keeps the original name.
            s += f".{self.algorithm}"
        if self.algorithm == "reptile":  # Training options only: one run is tested in both evaluation modes.
            s += (f".ts{self.support_per_class('train')}.ib{self.reptile_inner_batch}.ii{self.reptile_inner_iters}"
                  f".lr{self.reptile_learning_rate:g}.ms{self.reptile_meta_step:g}-{self.reptile_meta_step_final:g}")
            s += ("sgd" if self.reptile_sgd else "") + ("rep" if self.reptile_replacement else "")
            s += (f"wd{self.reptile_weight_decay:g}" if self.reptile_weight_decay != 1 else "")
            s += (f"foml{self.reptile_foml_tail}" if self.reptile_foml else "")
        if self.algorithm == "imaml":
            s += (f".{self.imaml_solver}.lam{self.imaml_lam:g}.n{self.imaml_n_steps}"
                  + (f".lr{self.imaml_inner_lr:g}" if self.imaml_solver == "gd" else f".hfcg{self.imaml_hf_cg_steps}")
                  + f".cg{self.imaml_cg_steps}.d{self.imaml_cg_damping:g}-{self.imaml_lam_damping:g}")
        return s

    def test_file_stem(self) -> str:
        """`test_ubs{K}_stepsize{lr}`, the original name of the test outputs."""
        stem = f"test_ubs{self.update_batch_size}_stepsize{_py2_float(self.update_lr)}"
        if self.algorithm == "reptile":
            stem += (f".eb{self.reptile_eval_batch}.ei{self.reptile_eval_iters}"
                     f".{'transductive' if self.reptile_transductive else 'nontransductive'}")
        return stem


def _py2_float(x: float) -> str:
    """`str(x)` as the original's flags produced it (floats always print as floats)."""
    return str(float(x))
