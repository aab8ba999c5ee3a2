"""The environment registry: name -> a family of reinforcement-learning tasks (no TensorFlow import).

An environment is a family of tasks (goals, directions, target velocities)
stepped for a whole meta-batch at once: `sample_tasks(n, rng)` draws n tasks,
`reset(tasks)` starts one episode per row of `tasks` (a meta-batch's tasks,
each repeated for its trajectories) and returns the observations,
`step(actions)` moves every episode and returns `(observations, rewards,
done)`. `horizon` is the episode length, `observation_size` and
`action_size` the shapes a policy needs.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Dict


@dataclasses.dataclass(frozen=True)
class EnvironmentEntry:
    """`target`: 'module:Class' of the environment; `extra`: the optional requirements it needs (None: none)."""

    target: str
    extra: str = ""

    def load(self) -> type:
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)


ENVIRONMENTS: Dict[str, EnvironmentEntry] = {
    "point_navigation": EnvironmentEntry("maml_tf.envs.navigation:PointNavigation"),
}


def make_environment(name: str, **kwargs):
    """The environment registered as `name`; `ValueError` naming the choices for an unknown one."""
    if name not in ENVIRONMENTS:
        raise ValueError(f"Unknown environment {name!r}; choose one of {', '.join(ENVIRONMENTS)}.")
    return ENVIRONMENTS[name].load()(**kwargs)
