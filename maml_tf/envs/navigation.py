"""The MAML paper's 2D navigation (Finn, Abbeel & Levine 2017, Section 5.3), for a whole meta-batch at once.

The authors' environment (`cbfinn/maml_rl`, `maml_examples/point_env_randgoal.py`, wrapped in rllab's
`normalize` by `maml_trpo_point.py`): a point starts at the origin; its observation is its position; an action
is a velocity, which `normalize` maps from the policy's [-1, 1] to the environment's [-0.1, 0.1]
(`lb + (a + 1) (ub - lb) / 2`, then clipped to the bounds); the reward is the negative distance to the task's
goal, drawn uniformly in [-0.5, 0.5]^2; an episode ends within 0.01 of the goal in both coordinates, or after
100 steps. The paper's text says the reward is the negative *squared* distance; we follow the authors' code.

Every episode of a meta-batch (tasks x trajectories, 40 x 20 in the paper) moves in one array operation per time
step. Finished episodes stay where they are and report zero reward (the sampler masks them).
"""

from __future__ import annotations

import numpy as np


class PointNavigation:
    """2D navigation to a goal: `sample_tasks(n, rng) -> goals [n, 2]`; `reset(goals) -> observations [N, 2]`;
    `step(actions [N, 2]) -> (observations, rewards [N], done [N])`."""

    observation_size = 2
    action_size = 2
    horizon = 100
    low, high = -0.1, 0.1  # The velocity bounds (the authors' action space).
    goal_range = (-0.5, 0.5)
    tolerance = 0.01

    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> np.ndarray:
        """`num_tasks` goals, uniform in the goal range."""
        return rng.uniform(self.goal_range[0], self.goal_range[1], size=(num_tasks, 2))

    def reset(self, goals: np.ndarray) -> np.ndarray:
        """One episode per row of `goals` (`[N, 2]`), every point at the origin; returns the observations."""
        self.goals = np.asarray(goals, dtype=np.float64)
        self.position = np.zeros_like(self.goals)
        self.done = np.zeros(len(self.goals), dtype=bool)
        return self.position.copy()

    def step(self, actions: np.ndarray):
        """Moves every unfinished episode by its velocity; returns `(observations, rewards, done)`."""
        velocity = np.clip(self.low + (np.asarray(actions, np.float64) + 1.0) * 0.5 * (self.high - self.low),
                           self.low, self.high)
        moving = ~self.done
        self.position[moving] += velocity[moving]
        offset = self.position - self.goals
        rewards = np.where(moving, -np.sqrt(offset[:, 0] ** 2 + offset[:, 1] ** 2), 0.0)
        self.done = self.done | (moving & np.all(np.abs(offset) < self.tolerance, axis=1))
        return self.position.copy(), rewards, self.done.copy()
