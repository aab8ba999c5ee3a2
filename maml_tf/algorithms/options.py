"""Each algorithm's own options, with its authors' defaults; `main.py` makes them `--<prefix>_<name>` flags.

The options that every algorithm shares are the original MAML flags
(`maml_tf.config.Config`); each algorithm maps them onto its authors' names
(see its module and docs/algorithms/). No TensorFlow here: flags are
validated before TensorFlow starts.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Dict, Optional, Tuple

from maml_tf.options import AlgorithmOptions, ConfigError, at_least, check_choices, option


@dataclasses.dataclass
class MAMLOptions(AlgorithmOptions):
    """MAML's options are the original flags (`--update_lr`, `--num_updates`, `--stop_grad`, ...)."""

    pretraining: ClassVar[bool] = True
    recomputes: ClassVar[bool] = True
    original: ClassVar[bool] = True

    def paper_results(self, config) -> Optional[Dict[int, float]]:
        """Finn et al. 2017's sinusoid 5-shot MSE after 1, 5 and 10 steps (the main job's comparison)."""
        if config.datasource == "sinusoid" and config.update_batch_size == 5 and not config.baseline:
            return {1: 0.67, 5: 0.38, 10: 0.35}
        return None


@dataclasses.dataclass
class ReptileOptions(AlgorithmOptions):
    unused_shared_flags: ClassVar[Dict[str, str]] = {
        "update_lr": "its inner step size is --reptile_learning_rate",
        "num_updates": "its inner steps are --reptile_inner_iters (training) and --reptile_eval_iters (evaluation)",
        "meta_lr": "its outer step size is --reptile_meta_step (to --reptile_meta_step_final)",
        "stop_grad": "it is first order; the authors' first-order MAML is --reptile_foml",
        "clip_norm": "--clip_norm applies to MAML and its variants, not to --algorithm=reptile"}
    not_distributable = ("its tasks run one after another, each from the inner Adam state the previous task left "
                         "(as the authors' code does), and their mini-batches come from one random stream")
    """`openai/supervised-reptile`'s flags and defaults. Shared: --num_classes (--classes), --update_batch_size
    (--shots), --meta_batch_size (--meta-batch), --metatrain_iterations (--meta-iters), --seed."""

    train_shots: int = option(0, "shots per class in a training task (0: --update_batch_size).")
    inner_batch: int = option(5, "inner mini-batch size in training.")
    inner_iters: int = option(20, "inner iterations per training task.")
    replacement: bool = option(False, "draw inner mini-batches with replacement.")
    learning_rate: float = option(1e-3, "inner Adam (beta1=0) step size, or SGD's with --reptile_sgd.")
    meta_step: float = option(0.1, "meta step size epsilon at the start.")
    meta_step_final: float = option(0.1, "meta step size at the end (linear schedule).")
    eval_batch: int = option(5, "inner mini-batch size in evaluation.")
    eval_iters: int = option(50, "inner iterations in evaluation.")
    weight_decay: float = option(1.0, "multiply the weights by this before each inner step (1: none).")
    transductive: bool = option(False, "evaluate all query examples in one batch (batch-norm statistics shared); "
                                       "otherwise each with the support set.")
    sgd: bool = option(False, "plain SGD instead of Adam in the inner loop.")
    foml: bool = option(False, "the authors' first-order MAML instead of Reptile.")
    foml_tail: int = option(0, "FOML: shots per class held out for the last inner step (0: none).")

    def validate(self, config) -> None:
        at_least(self, 1, "inner_batch", "inner_iters", "eval_batch")
        at_least(self, 0, "train_shots", "eval_iters", "foml_tail")
        if self.foml_tail and not self.foml:
            raise ConfigError(f"{self.flag('foml_tail')} needs {self.flag('foml')}=True.")
        shots = config.support_per_class("train")
        if self.foml_tail >= shots:
            raise ConfigError(f"{self.flag('foml_tail')}={self.foml_tail} must be smaller than the training shots "
                              f"({shots}, {self.flag('train_shots')}).")
        if self.replacement and self.inner_batch > shots * config.num_ways:
            raise ConfigError(f"{self.flag('inner_batch')}={self.inner_batch} is larger than a training task "
                              f"({shots * config.num_ways} examples); mini-batches with replacement must fit.")

    def training_shots(self, config) -> Optional[int]:
        return self.train_shots or None

    def exp_suffix(self, config) -> str:  # Training options only: one run is tested in both evaluation modes.
        s = (f".ts{config.support_per_class('train')}.ib{self.inner_batch}.ii{self.inner_iters}"
             f".lr{self.learning_rate:g}.ms{self.meta_step:g}-{self.meta_step_final:g}")
        s += ("sgd" if self.sgd else "") + ("rep" if self.replacement else "")
        s += f"wd{self.weight_decay:g}" if self.weight_decay != 1 else ""
        return s + (f"foml{self.foml_tail}" if self.foml else "")

    def test_suffix(self, config) -> str:
        return f".eb{self.eval_batch}.ei{self.eval_iters}.{'transductive' if self.transductive else 'nontransductive'}"


@dataclasses.dataclass
class IMAMLOptions(AlgorithmOptions):
    unused_shared_flags: ClassVar[Dict[str, str]] = {
        "update_lr": "its inner step size is --imaml_inner_lr",
        "num_updates": "its inner steps are --imaml_n_steps",
        "stop_grad": "its first-order meta-gradient is --imaml_cg_steps=1",
        "clip_norm": "--clip_norm applies to MAML and its variants, not to --algorithm=imaml"}
    """`aravindr93/imaml_dev`'s flags and defaults. Shared: --meta_lr (--outer_lr), --meta_batch_size
    (--task_mb_size), --metatrain_iterations (--meta_steps), --num_classes, --update_batch_size."""

    lam: float = option(1.0, "proximal regularisation lambda of the inner problem (the paper: 2.0).")
    solver: str = option("gd", "inner solver: gradient descent or Newton-CG.", choices=("gd", "hessian_free"))
    n_steps: int = option(16, "inner gradient steps (gd) or Newton iterations (hessian_free).")
    inner_lr: float = option(1e-2, "inner gradient-descent step size (the paper's Omniglot runs: 0.1).")
    cg_steps: int = option(5, "conjugate-gradient steps of the implicit meta-gradient (<= 1: first order).")
    cg_damping: float = option(1.0, "CG matrix (1 + d) v + H v / (lam + lam_damping): d (0 with lam_damping 0 "
                                    "gives the exact I + H / lam).")
    lam_damping: float = option(10.0, "added to lambda in the CG matrix, as the authors' code.")
    hf_cg_steps: int = option(5, "CG steps per Newton iteration (hessian_free).")

    def validate(self, config) -> None:
        check_choices(self)
        if not self.lam > 0:
            raise ConfigError(f"{self.flag('lam')} must be positive; got {self.lam}.")
        at_least(self, 0, "n_steps", "cg_steps")
        at_least(self, 1, "hf_cg_steps")

    def exp_suffix(self, config) -> str:
        return (f".{self.solver}.lam{self.lam:g}.n{self.n_steps}"
                + (f".lr{self.inner_lr:g}" if self.solver == "gd" else f".hfcg{self.hf_cg_steps}")
                + f".cg{self.cg_steps}.d{self.cg_damping:g}-{self.lam_damping:g}")


@dataclasses.dataclass
class MetaSGDOptions(AlgorithmOptions):
    """Meta-SGD (Li et al. 2017). Shared with MAML: --num_updates, --meta_lr, --stop_grad, --meta_batch_size."""

    pretraining: ClassVar[bool] = True  # MAML's pretraining step, inherited.
    recomputes: ClassVar[bool] = True

    init: str = option("uniform", "initial step sizes: 'uniform' in [init_low, init_high] (the paper), or "
                                  "'update_lr' (every step size --update_lr).", choices=("uniform", "update_lr"))
    init_low: float = option(0.005, "lower end of the uniform initial step sizes.")
    init_high: float = option(0.1, "upper end of the uniform initial step sizes.")
    learn_lr: bool = option(True, "meta-learn the step sizes (False: frozen at their initial values).")

    def validate(self, config) -> None:
        check_choices(self)
        if not 0 <= self.init_low <= self.init_high:
            raise ConfigError(f"Need 0 <= {self.flag('init_low')} <= {self.flag('init_high')}; got {self.init_low}, "
                              f"{self.init_high}.")

    def exp_suffix(self, config) -> str:
        init = f"u{self.init_low:g}-{self.init_high:g}" if self.init == "uniform" else "alpha"
        return f".init{init}" + ("" if self.learn_lr else ".frozen")


@dataclasses.dataclass
class ANILOptions(AlgorithmOptions):
    """ANIL (Raghu et al. 2020). Shared with MAML: --update_lr, --num_updates, --meta_lr, --stop_grad."""

    pretraining: ClassVar[bool] = True  # MAML's pretraining step, inherited.
    recomputes: ClassVar[bool] = True

    head_layers: int = option(1, "layers with weights, counted back from the output, that adapt in the inner loop "
                                 "(the paper: 1, the final layer).")

    def validate(self, config) -> None:
        at_least(self, 1, "head_layers")

    def exp_suffix(self, config) -> str:
        return f".head{self.head_layers}"


@dataclasses.dataclass
class MAMLPPOptions(AlgorithmOptions):
    """MAML++ (Antoniou et al. 2019), `AntreasAntoniou/HowToTrainYourMAMLPytorch`'s options and defaults.
    Shared: --num_updates (number_of_training_steps_per_iter: their configs 5), --meta_batch_size (batch_size:
    8 on Omniglot, 2 on MiniImagenet), --meta_lr (meta_learning_rate 0.001), --epoch_iterations
    (total_iter_per_epoch: 500), --stop_grad (second_order=False), --norm (batch_norm or None)."""

    fixed_on_resume: ClassVar[Tuple[str, ...]] = ("metatrain_iterations",)  # It sets the annealing's epochs.
    recomputes: ClassVar[bool] = True
    unused_shared_flags: ClassVar[Dict[str, str]] = {"update_lr": "its initial inner step sizes are "
                                                                  "--mamlpp_init_inner_lr"}

    msl: bool = option(True, "multi-step loss: the query loss after every inner step, weighted as the authors "
                             "(annealed toward the last step).")
    multi_step_loss_num_epochs: int = option(10, "epochs over which the multi-step loss anneals; the last step "
                                                 "alone after them.")
    first_order_to_second_order_epoch: int = option(-1, "derivative-order annealing: first-order meta-gradients up "
                                                        "to this epoch, second order after (-1: second order "
                                                        "throughout, as the authors' configs).")
    bnrs: bool = option(True, "per-step batch-norm running statistics (one set per inner step).")
    bnwb: bool = option(True, "per-step batch-norm scale and offset (one set per inner step).")
    lslr: bool = option(True, "learned per-layer per-step inner step sizes (False: frozen at "
                              "--mamlpp_init_inner_lr).")
    init_inner_lr: float = option(0.1, "initial inner step sizes (the authors' task_learning_rate).")
    ca: bool = option(True, "cosine annealing of the meta step size from --meta_lr to --mamlpp_min_learning_rate "
                            "over the run's epochs.")
    min_learning_rate: float = option(1e-5, "the annealed meta step size's minimum (MiniImagenet configs: 0.001).")
    transductive: bool = option(True, "evaluate with batch statistics, as the authors' code; False: with the "
                                      "per-step running statistics.")
    filters: int = option(0, "conv filters per stage (0: the authors' 64 for Omniglot, 48 for MiniImagenet).")

    def validate(self, config) -> None:
        at_least(self, 1, "multi_step_loss_num_epochs")
        at_least(self, 0, "filters")
        if not self.init_inner_lr > 0:
            raise ConfigError(f"{self.flag('init_inner_lr')} must be positive; got {self.init_inner_lr}.")
        if config.norm == "layer_norm":
            raise ConfigError("MAML++'s network has per-step batch norm: use --norm=batch_norm or --norm=None.")

    def exp_suffix(self, config) -> str:
        parts = [f"msl{self.multi_step_loss_num_epochs}" if self.msl else "nomsl",
                 f"da{self.first_order_to_second_order_epoch}", "bnrs" if self.bnrs else "nobnrs",
                 "bnwb" if self.bnwb else "nobnwb", ("lslr" if self.lslr else "fixedlr") + f"{self.init_inner_lr:g}",
                 f"ca{self.min_learning_rate:g}" if self.ca else "noca", f"ep{config.epoch_length}"]
        return "." + ".".join(parts) + (f".f{self.filters}" if self.filters else "")

    def test_suffix(self, config) -> str:
        return "" if self.transductive else ".nontransductive"

    def test_num_updates(self, config) -> Optional[int]:
        return config.num_updates  # The authors evaluate with as many steps as they train.

    def epoch_iterations(self, config) -> int:
        return 500


@dataclasses.dataclass
class EMAMLOptions(AlgorithmOptions):
    """EMAML (Yoon et al. 2018's baseline), `jsikyoon/bmaml`'s `emaml_main.py` defaults. Shared: --num_updates
    (in_step: 1), --update_lr (in_lr: 1e-3), --meta_lr (1e-3), --meta_batch_size (num_tasks: 10), --stop_grad."""

    fixed_on_resume: ClassVar[Tuple[str, ...]] = ("metatrain_iterations",)  # It sets the step size's decay.

    num_particles: int = option(10, "particles (independent MAML models) of the ensemble.")
    lr_decay: bool = option(True, "decay the meta step size by 0.98 every 1% of --metatrain_iterations, as the "
                                  "authors.")

    def validate(self, config) -> None:
        at_least(self, 1, "num_particles")

    def exp_suffix(self, config) -> str:
        return f".m{self.num_particles}" + ("" if self.lr_decay else ".nodecay")


@dataclasses.dataclass
class BMAMLOptions(EMAMLOptions):
    """BMAML (Yoon et al. 2018), `jsikyoon/bmaml`'s `bmaml_main.py` defaults. Shared: --num_updates (the
    chaser's SVGD steps, follow_step: 1), --update_lr (SVGD step size, follow_lr: 1e-3), --meta_lr (1e-3),
    --meta_batch_size (num_tasks: 10), --stop_grad."""

    leader_steps: int = option(1, "the leader's SVGD steps after the chaser's, on support and query together.")
    repulsion: float = option(1.0, "scale of SVGD's repulsive (kernel gradient) term: 1 is exact SVGD; the authors' "
                                   "code uses 0.5.")
    bandwidth: float = option(0.0, "RBF kernel bandwidth h (0: the median heuristic, median of squared distances "
                                   "/ log M).")
    gamma_a: float = option(2.0, "Gamma prior shape of the likelihood's noise precision.")
    gamma_b: float = option(0.2, "Gamma prior rate of the likelihood's noise precision.")
    lambda_a: float = option(2.0, "Gamma prior shape of the weight prior's precision.")
    lambda_b: float = option(2.0, "Gamma prior rate of the weight prior's precision.")

    def validate(self, config) -> None:
        super().validate(config)
        at_least(self, 1, "leader_steps")
        at_least(self, 0, "repulsion", "bandwidth")
        for name in ("gamma_a", "gamma_b", "lambda_a", "lambda_b"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{self.flag(name)} must be positive; got {getattr(self, name)}.")

    def exp_suffix(self, config) -> str:
        s = super().exp_suffix(config) + f".lead{self.leader_steps}"
        s += f".rep{self.repulsion:g}" if self.repulsion != 1 else ""
        s += f".h{self.bandwidth:g}" if self.bandwidth else ""
        priors = (self.gamma_a, self.gamma_b, self.lambda_a, self.lambda_b)
        return s + (".g{:g}-{:g}.l{:g}-{:g}".format(*priors) if priors != (2.0, 0.2, 2.0, 2.0) else "")


@dataclasses.dataclass
class PLATIPUSOptions(AlgorithmOptions):
    not_distributable = ("its tasks' samples come from one random stream in task order; replicas would draw "
                         "theirs from copies of it")
    """PLATIPUS (Finn, Xu & Levine 2018; no authors' code: the paper's Algorithm 1). Shared: --num_updates and
    --update_lr (the inner SGD after sampling), --meta_lr, --meta_batch_size, --stop_grad."""

    num_samples: int = option(10, "weight samples from the prior p at test time (functions per task).")
    train_samples: int = option(1, "weight samples from q per training task (Algorithm 1: one).")
    kl_weight: float = option(1.0, "weight of KL(q || p) in the meta-loss (Algorithm 1: 1).")
    init_log_std: float = option(-4.0, "initial log standard deviation of p (sigma_theta) and q (v_q).")
    init_gamma: float = option(0.01, "initial learned step sizes gamma_p and gamma_q.")

    def validate(self, config) -> None:
        at_least(self, 1, "num_samples", "train_samples")
        at_least(self, 0, "kl_weight")

    def exp_suffix(self, config) -> str:
        return (f".kl{self.kl_weight:g}.ts{self.train_samples}.std{self.init_log_std:g}.g{self.init_gamma:g}")

    def test_suffix(self, config) -> str:
        return f".samples{self.num_samples}"


@dataclasses.dataclass
class LLAMAOptions(AlgorithmOptions):
    """LLAMA (Grant et al. 2018; no authors' code: the paper's Subroutine 4). Shared: --num_updates and
    --update_lr (MAML's inner loop, whose result is the Laplace mean), --meta_lr, --meta_batch_size, --stop_grad."""

    pretraining: ClassVar[bool] = True
    recomputes: ClassVar[bool] = True

    eta: float = option(1e-3, "weight of log det(H) / 2, the Laplace term, in each task's meta-objective (0: MAML's "
                              "objective).")
    tau: float = option(0.0, "the prior's curvature tau (K-FAC damping); 0: the precision of the prior implied by "
                             "early stopping, 1 / (update_lr * num_updates).")
    num_samples: int = option(10, "draws from the Laplace posterior per task for predictions.")
    predict_tau: float = option(0.0, "the prior's curvature in the posterior of predictions, a test-time choice "
                                     "(0: --llama_tau's).")

    def validate(self, config) -> None:
        at_least(self, 0, "eta", "tau", "predict_tau")
        at_least(self, 1, "num_samples")
        if config.mixed_precision:
            raise ConfigError("LLAMA's curvature (Cholesky factorisations) runs in float32: drop --mixed_precision.")

    def exp_suffix(self, config) -> str:
        return f".eta{self.eta:g}" + (f".tau{self.tau:g}" if self.tau else "")

    def test_suffix(self, config) -> str:
        return f".samples{self.num_samples}" + (f".ptau{self.predict_tau:g}" if self.predict_tau else "")


@dataclasses.dataclass
class MMAMLOptions(AlgorithmOptions):
    unused_shared_flags: ClassVar[Dict[str, str]] = {"clip_norm": "MMAML's is --mmaml_clip_norm"}
    """MMAML (Vuorio et al. 2019; `vuoristo/MMAML-Regression`). Shared: --num_updates, --update_lr (the authors'
    --num-updates 5, --fast-lr 0.001), --meta_lr (--slow-lr), --meta_batch_size, --stop_grad (--first-order)."""

    recomputes: ClassVar[bool] = True

    modulation: str = option("film", "how the encoder modulates each layer: film (the authors' affine), sigmoid or "
                                     "softmax (their gates).", choices=("film", "sigmoid", "softmax"))
    modulated_layers: int = option(0, "modulate the lowest N hidden layers (0: all; the authors' 2-mode command: 1).")
    encoder_hidden: int = option(0, "encoder width: the LSTM's units (regression; 0: 40) or the conv encoder's last "
                                    "layer (images; 0: 128).")
    inner_grad_clip: float = option(10.0, "clip inner-loop gradients elementwise to this (0: not clipped).")
    clip_norm: float = option(2.0, "clip the network's and the encoder's meta-gradients each to this norm (0: not "
                                   "clipped).")

    def validate(self, config) -> None:
        check_choices(self)
        at_least(self, 0, "modulated_layers", "encoder_hidden", "inner_grad_clip", "clip_norm")

    def exp_suffix(self, config) -> str:
        return f".{self.modulation}" + (f".layers{self.modulated_layers}" if self.modulated_layers else "")
