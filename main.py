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


def main(argv):
    try:
        if len(argv) > 1:
            raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
        config = config_from_flags().validate()
    except ConfigError as e:
        print(f"main.py: error: {e} (see --help)", file=sys.stderr)
        sys.exit(2)
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
