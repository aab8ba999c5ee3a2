"""Meta-learning from the command line, with the original MAML code's flags.

Usage (the original README's commands work unchanged), e.g.
    python main.py --datasource=sinusoid --logdir=logs/sine/ --metatrain_iterations=70000 --norm=None --update_batch_size=10
    python main.py --datasource=sinusoid --logdir=logs/sine/ --metatrain_iterations=70000 --norm=None --update_batch_size=5 --train_update_batch_size=10 --train=False
The flags are the fields of `maml_tf.config.Config` and, for each algorithm,
`--<prefix>_<option>` from its options (`maml_tf/algorithms/options.py`); see
README.md and docs/.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402

from maml_tf import cli  # noqa: E402  (flags and the registry: no TensorFlow import)
from maml_tf.config import ConfigError  # noqa: E402

cli.define_config_flags()


def main(argv):
    try:
        if len(argv) > 1:
            raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
        config = cli.config_from_flags().validate()
    except ConfigError as e:
        cli.usage_error(str(e))
    if not config.tf_log:
        cli.quiet_tensorflow()
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
    app.run(main, flags_parser=cli.parse_flags)
