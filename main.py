"""Meta-learning from the command line, with the original MAML code's flags.

Usage (the original README's commands work unchanged), e.g.
    python main.py --datasource=sinusoid --logdir=logs/sine/ --metatrain_iterations=70000 --norm=None --update_batch_size=10
    python main.py --datasource=sinusoid --logdir=logs/sine/ --metatrain_iterations=70000 --norm=None --update_batch_size=5 --train_update_batch_size=10 --train=False
The flags are the fields of `maml_tf.config.Config` and, for each algorithm,
`--<prefix>_<option>` from its options (`maml_tf/algorithms/options.py`); see
README.md and docs/.
"""

import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from maml_tf import algorithms  # noqa: E402  (the registry: no TensorFlow import)
from maml_tf.config import Config, ConfigError  # noqa: E402

FLAGS = flags.FLAGS

_DEFINE = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string,
           type(None): flags.DEFINE_string}


def define_flags(fields, prefix: str = "") -> None:
    """One flag per dataclass field (its default and help; the value checks are `Config.validate`'s)."""
    for f in fields:
        if f.metadata.get("flag", True):
            _DEFINE[type(f.default)](prefix + f.name, f.default, f.metadata["help"])


define_flags(dataclasses.fields(Config))
for _entry in algorithms.ALGORITHMS.values():
    define_flags(dataclasses.fields(_entry.options), _entry.prefix + "_")


def config_from_flags() -> Config:
    """All flags as a plain `Config`; flags of an algorithm other than `--algorithm` are an error."""
    values = {f.name: FLAGS[f.name].value for f in dataclasses.fields(Config) if f.metadata.get("flag", True)}
    try:
        chosen = algorithms.canonical(values["algorithm"])
    except ValueError:
        chosen = None  # `validate` names the choices.
    for name, entry in algorithms.ALGORITHMS.items():
        for f in dataclasses.fields(entry.options):
            flag = f"{entry.prefix}_{f.name}"
            if name == chosen:
                values[flag] = FLAGS[flag].value
            elif FLAGS[flag].present:
                raise ConfigError(f"--{flag} belongs to --algorithm={name}, not --algorithm={values['algorithm']}.")
    return Config(**values)


def usage_error(message: str):
    """One line and exit status 2, as for any command-line tool."""
    print(f"main.py: error: {message} (see --help)", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv):
    try:
        return FLAGS(argv)
    except flags.Error as e:
        usage_error(str(e))


def quiet_tensorflow() -> None:
    """Keeps TensorFlow's own log lines out of a normal run (`--tf_log` shows them).

    Its C++ start-up notices (the absl pre-initialisation warning, oneDNN, CUDA
    probes) are written to file descriptor 2 whatever TF_CPP_MIN_LOG_LEVEL
    says, so descriptor 2 goes to /dev/null and Python's `sys.stderr` writes
    to a copy of the original: the program's own errors and warnings, and
    Python tracebacks, still reach the terminal.
    """
    sys.stderr.flush()
    original = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    sys.stderr = os.fdopen(original, "w", buffering=1)
    import logging

    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # TensorFlow's Python INFO lines (checkpoint sharding).
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def main(argv):
    try:
        if len(argv) > 1:
            raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
        config = config_from_flags().validate()
    except ConfigError as e:
        usage_error(str(e))
    if not config.tf_log:
        quiet_tensorflow()
    from maml_tf import train  # TensorFlow is imported only after the flags are checked.
    from maml_tf.data.errors import DataError

    try:
        train.run(config)
    except (train.TrainingError, DataError, FileNotFoundError) as e:
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
