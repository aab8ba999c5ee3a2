"""Command-line plumbing shared by `main.py` and `python -m maml_tf.compare`: the flags of `Config`, one-line
usage errors, and TensorFlow's start-up noise kept off the terminal (no TensorFlow import here)."""

import dataclasses
import os
import sys

from absl import flags

from maml_tf import algorithms
from maml_tf.config import Config, ConfigError

FLAGS = flags.FLAGS

_DEFINE = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string,
           type(None): flags.DEFINE_string}


def define_flags(fields, prefix: str = "") -> None:
    """One flag per dataclass field (its default and help; the value checks are `Config.validate`'s)."""
    for f in fields:
        if f.metadata.get("flag", True):
            _DEFINE[type(f.default)](prefix + f.name, f.default, f.metadata["help"])


def define_config_flags() -> None:
    """The flags of `Config` and of every algorithm's options (`--<prefix>_<option>`)."""
    define_flags(dataclasses.fields(Config))
    for entry in algorithms.ALGORITHMS.values():
        define_flags(dataclasses.fields(entry.options), entry.prefix + "_")


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
    given = [f.name for f in dataclasses.fields(Config) if f.metadata.get("flag", True) and FLAGS[f.name].present]
    return Config(**values, given=given)


def usage_error(message: str, program: str = "main.py"):
    """One line and exit status 2, as for any command-line tool."""
    print(f"{program}: error: {message} (see --help)", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv, program: str = "main.py"):
    try:
        return FLAGS(argv)
    except flags.Error as e:
        usage_error(str(e), program)


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


