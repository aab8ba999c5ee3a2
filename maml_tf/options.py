"""Declaring options as dataclass fields, from which `main.py` builds its flags (no TensorFlow import).

    lam: float = option(1.0, "proximal regularisation lambda of the inner problem.")

An algorithm's options dataclass (a subclass of `AlgorithmOptions`) gives its
prefixed flags (`--<prefix>_<field>`), their validation, and its part of the
experiment folder's name.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Dict, Optional, Sequence, Tuple


class ConfigError(ValueError):
    """A configuration that cannot run; the message says what to change."""


def option(default, help: str, choices: Optional[Sequence[str]] = None):  # noqa: A002 (absl's word)
    """A dataclass field carrying its flag help (and, for strings, the allowed values)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclasses.dataclass
class AlgorithmOptions:
    """Base of an algorithm's own options; every hook has a neutral default."""

    # Whether the algorithm has MAML's pretraining step, so that --pretrain_iterations and --baseline apply.
    pretraining: ClassVar[bool] = False
    # Whether the algorithm runs MAML's task function, so that --recompute_inner_steps applies.
    recomputes: ClassVar[bool] = False
    # Why the algorithm cannot split a meta-batch across replicas (--distribute), or None if it can.
    not_distributable: ClassVar[Optional[str]] = None
    # Shared flags that a resumed training may not change for this algorithm (beyond `train.RESUMABLE_CHANGES`).
    fixed_on_resume: ClassVar[Tuple[str, ...]] = ()
    # Shared flags the algorithm does not use -> what it uses instead (said in the one-line error when such a flag
    # is given explicitly, or a switch that is off by default is turned on).
    unused_shared_flags: ClassVar[Dict[str, str]] = {}
    # Whether it is the original code's algorithm: the original's experiment folder names (no algorithm suffix) and
    # `maml_tf.compare`.
    original: ClassVar[bool] = False

    flag_prefix = ""  # The registry's prefix of its flags (`Config` sets it): `flag(name)` is the flag's name.

    def flag(self, name: str) -> str:
        """`--<prefix>_<name>`, the flag of the option `name`."""
        return f"--{self.flag_prefix}_{name}"

    def validate(self, config) -> None:
        """Raises `ConfigError` for values that cannot run with `config`."""

    def exp_suffix(self, config) -> str:
        """Appended to the experiment folder's name (after `.<algorithm>`): the training options."""
        return ""

    def test_suffix(self, config) -> str:
        """Appended to the test files' name: options that change evaluation only."""
        return ""

    def training_shots(self, config) -> Optional[int]:
        """Support examples per class of training tasks, if the algorithm sets its own."""
        return None

    def test_num_updates(self, config) -> Optional[int]:
        """Inner steps reported in training summaries and tests, if not the original's choice."""
        return None

    def epoch_iterations(self, config) -> int:
        """Iterations per epoch when --epoch_iterations is 0 (0: no epochs)."""
        return 0

    def paper_results(self, config) -> Optional[Dict[int, float]]:
        """The paper's test results for `config`'s protocol, by inner step (printed beside the test's), if any."""
        return None


def check_choices(options) -> None:
    """Raises `ConfigError` for a string field outside its declared choices."""
    for f in dataclasses.fields(options):
        choices, value = f.metadata.get("choices"), getattr(options, f.name)
        if choices and value not in choices:
            raise ConfigError(f"{options.flag(f.name)} must be one of {', '.join(choices)}; got {value!r}.")


def at_least(options, minimum, *names: str) -> None:
    """Raises `ConfigError` unless each of `names` is at least `minimum`."""
    for name in names:
        if getattr(options, name) < minimum:
            raise ConfigError(f"{options.flag(name)} must be at least {minimum}; got {getattr(options, name)}.")
