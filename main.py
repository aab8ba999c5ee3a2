"""Meta-learning from the command line, with the original MAML code's flags.

Usage (the original README's commands work unchanged), e.g.
    python main.py --datasource=sinusoid --logdir=logs/sine/ --metatrain_iterations=70000 --norm=None --update_batch_size=10
    python main.py --datasource=sinusoid --logdir=logs/sine/ --metatrain_iterations=70000 --norm=None --update_batch_size=5 --train_update_batch_size=10 --train=False
See README.md for every flag.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from maml_tf.config import Config, ConfigError  # noqa: E402

FLAGS = flags.FLAGS

## Dataset/method options
flags.DEFINE_string("datasource", "sinusoid", "sinusoid or omniglot or miniimagenet")
flags.DEFINE_integer("num_classes", 5, "number of classes used in classification (e.g. 5-way classification).")
flags.DEFINE_string("baseline", None, "oracle, or None")
flags.DEFINE_enum("algorithm", "maml", ["maml", "reptile", "imaml"], "meta-learning algorithm.")
## Training options
flags.DEFINE_integer("pretrain_iterations", 0, "number of pre-training iterations.")
flags.DEFINE_integer("metatrain_iterations", 15000, "number of metatraining iterations.")
flags.DEFINE_integer("meta_batch_size", 25, "number of tasks sampled per meta-update")
flags.DEFINE_float("meta_lr", 0.001, "the base learning rate of the generator")
flags.DEFINE_integer("update_batch_size", 5,
                     "number of examples used for inner gradient update (K for K-shot learning).")
flags.DEFINE_float("update_lr", 1e-3, "step size alpha for inner gradient update.")
flags.DEFINE_integer("num_updates", 1, "number of inner gradient updates during training.")
## Model options
flags.DEFINE_string("norm", "batch_norm", "batch_norm, layer_norm, or None")
flags.DEFINE_integer("num_filters", 64, "number of filters for conv nets -- 32 for miniimagenet, 64 for omiglot.")
flags.DEFINE_bool("conv", True, "whether or not to use a convolutional network, only applicable in some cases")
flags.DEFINE_bool("max_pool", False, "Whether or not to use max pooling rather than strided convolutions")
flags.DEFINE_bool("stop_grad", False, "if True, do not use second derivatives in meta-optimization (for speed)")
## Logging, saving, and testing options
flags.DEFINE_bool("log", True, "if false, do not log summaries, for debugging code.")
flags.DEFINE_string("logdir", "/tmp/data", "directory for summaries and checkpoints.")
flags.DEFINE_bool("resume", True, "resume training if there is a model available")
flags.DEFINE_bool("train", True, "True to train, False to test.")
flags.DEFINE_integer("test_iter", -1, "iteration to load model (-1 for latest model)")
flags.DEFINE_bool("test_set", False, "Set to true to test on the the test set, False for the validation set.")
flags.DEFINE_integer("train_update_batch_size", -1,
                     "number of examples used for gradient update during training "
                     "(use if you want to test with a different number).")
flags.DEFINE_float("train_update_lr", -1,
                   "value of inner gradient step step during training. "
                   "(use if you want to test with a different value)")
## Port-only options
flags.DEFINE_integer("seed", 0, "seed of the training task sampler and the weight initialisers.")
flags.DEFINE_integer("num_test_tasks", 600, "tasks evaluated with --train=False (the original uses 600).")
flags.DEFINE_string("data_dir", "data", "folder holding omniglot_resized/ and miniImagenet/.")
flags.DEFINE_enum("omniglot_source", "folder", ["folder", "tfds"],
                  "read Omniglot from data_dir/omniglot_resized or from tensorflow-datasets.")
flags.DEFINE_string("tfds_data_dir", None, "tensorflow-datasets folder (omniglot_source=tfds).")
flags.DEFINE_bool("progress", True, "show a progress bar on a terminal.")
flags.DEFINE_string("import_checkpoint", None,
                    "start from (or, with --train=False, evaluate) a TF1 checkpoint written by the original code, "
                    "e.g. logs/miniimagenet1shot/.../model59000.")
flags.DEFINE_string("export_checkpoint", None, "after training or testing, write the weights as a TF1 checkpoint "
                    "the original code can restore.")

## Reptile (--algorithm=reptile): the authors' flags and defaults, openai/supervised-reptile.
## Shared: --num_classes (--classes), --update_batch_size (--shots), --meta_batch_size (--meta-batch),
## --metatrain_iterations (--meta-iters), --seed.
flags.DEFINE_integer("reptile_train_shots", 0, "shots per class in a training task (0: --update_batch_size).")
flags.DEFINE_integer("reptile_inner_batch", 5, "inner mini-batch size in training.")
flags.DEFINE_integer("reptile_inner_iters", 20, "inner iterations per training task.")
flags.DEFINE_bool("reptile_replacement", False, "draw inner mini-batches with replacement.")
flags.DEFINE_float("reptile_learning_rate", 1e-3, "inner Adam (beta1=0) step size, or SGD's with --reptile_sgd.")
flags.DEFINE_float("reptile_meta_step", 0.1, "meta step size epsilon at the start.")
flags.DEFINE_float("reptile_meta_step_final", 0.1, "meta step size at the end (linear schedule).")
flags.DEFINE_integer("reptile_eval_batch", 5, "inner mini-batch size in evaluation.")
flags.DEFINE_integer("reptile_eval_iters", 50, "inner iterations in evaluation.")
flags.DEFINE_float("reptile_weight_decay", 1.0, "multiply the weights by this before each inner step (1: none).")
flags.DEFINE_bool("reptile_transductive", False, "evaluate all query examples in one batch (batch-norm statistics "
                  "shared); otherwise each with the support set.")
flags.DEFINE_bool("reptile_sgd", False, "plain SGD instead of Adam in the inner loop.")
flags.DEFINE_bool("reptile_foml", False, "the authors' first-order MAML instead of Reptile.")
flags.DEFINE_integer("reptile_foml_tail", 0, "FOML: shots per class held out for the last inner step (0: none).")

## iMAML (--algorithm=imaml): the authors' flags and defaults, aravindr93/imaml_dev. Shared: --meta_lr (--outer_lr),
## --meta_batch_size (--task_mb_size), --metatrain_iterations (--meta_steps), --num_classes, --update_batch_size.
flags.DEFINE_float("imaml_lam", 1.0, "proximal regularisation lambda of the inner problem (the paper: 2.0).")
flags.DEFINE_enum("imaml_solver", "gd", ["gd", "hessian_free"], "inner solver: gradient descent or Newton-CG.")
flags.DEFINE_integer("imaml_n_steps", 16, "inner gradient steps (gd) or Newton iterations (hessian_free).")
flags.DEFINE_float("imaml_inner_lr", 1e-2, "inner gradient-descent step size (the paper's Omniglot runs: 0.1).")
flags.DEFINE_integer("imaml_cg_steps", 5, "conjugate-gradient steps of the implicit meta-gradient (<= 1: first order).")
flags.DEFINE_float("imaml_cg_damping", 1.0, "CG matrix (1 + d) v + H v / (lam + lam_damping): d (0 with "
                   "lam_damping 0 gives the exact I + H / lam).")
flags.DEFINE_float("imaml_lam_damping", 10.0, "added to lambda in the CG matrix, as the authors' code.")
flags.DEFINE_integer("imaml_hf_cg_steps", 5, "CG steps per Newton iteration (hessian_free).")

## Speed (the results are the same with any of these but --mixed_precision, which rounds to float16).
flags.DEFINE_bool("batch_tasks", True, "MAML: run a meta-batch's tasks at once (grouped convolutions, batched "
                  "matmuls) where the network allows and it was faster (see --batched_conv_max_support); False: one "
                  "by one with tf.map_fn, as the original.")
flags.DEFINE_integer("batched_conv_max_support", 10, "with --batch_tasks: conv nets run task-batched only when a task "
                     "has fewer support examples than this (0: always); larger tasks were faster one by one.")
flags.DEFINE_integer("task_groups", 0, "with --batch_tasks: groups of tasks run in parallel; 0: two per CPU core "
                     "(1 on a GPU or with --jit_compile).")
flags.DEFINE_integer("intra_op_threads", 1, "threads each TensorFlow op may use; 1 (default) runs independent "
                     "ops (tasks) on separate cores instead, faster on a CPU; 0: TensorFlow's default.")

flags.DEFINE_bool("jit_compile", False, "XLA-compile the train and evaluation steps (on the 2-core CPU benchmark: "
                  "sinusoid about 1.8x faster, Omniglot conv net 4.6x slower).")
flags.DEFINE_bool("mixed_precision", False, "compute in float16 with float32 variables, losses, fast-weight updates "
                  "and batch-norm moments, and dynamic loss scaling (for GPUs; results differ from float32 by "
                  "float16 rounding).")


def config_from_flags() -> Config:
    """All flags as a plain `Config`."""
    fields = Config.__dataclass_fields__
    return Config(**{name: FLAGS[name].value for name in fields})


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    try:
        config = config_from_flags().validate()
    except ConfigError as e:
        raise app.UsageError(str(e))
    from maml_tf import train  # TensorFlow is imported only after the flags are checked.
    try:
        train.run(config)
    except (train.TrainingError, FileNotFoundError) as e:
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    app.run(main)
