"""Returns, the authors' linear feature baseline and GAE advantages, for padded episodes of one task at once.

Episodes are arrays `[episodes, horizon, ...]` with a `mask` `[episodes, horizon]` that is 1 on the steps an
episode took and 0 after it ended. Following `cbfinn/maml_rl` (rllab's `BaseSampler.process_samples` as MAML's
code has it, and `LinearFeatureBaseline`), for each task's episodes:

1. returns: the discounted sums of the rewards to the end of each episode;
2. the baseline is fitted to them on that task's own episodes: ridge least squares (coefficient 1e-5, ten times
   larger while the solution has a NaN, at most five tries) on the features `clip(o, -10, 10)`, `o^2`, `t/100`,
   `(t/100)^2`, `(t/100)^3`, `1` (t: the step within the episode);
3. advantages by GAE: `delta_t = r_t + gamma b_{t+1} - b_t` with `b = 0` after an episode's last step,
   discounted by `gamma lambda`;
4. centred: minus their mean, divided by their standard deviation plus 1e-8, over the task's steps.
"""

from __future__ import annotations

import numpy as np


def discounted_cumsum(values: np.ndarray, mask: np.ndarray, discount: float) -> np.ndarray:
    """`y_t = sum_{k >= t} discount^(k - t) x_k` along axis 1 over the masked steps (0 where masked)."""
    values = np.where(mask > 0, values, 0.0)
    out = np.zeros_like(values, dtype=np.float64)
    running = np.zeros(values.shape[0])
    for t in reversed(range(values.shape[1])):
        running = values[:, t] + discount * running
        out[:, t] = running
    return out * (mask > 0)


def baseline_features(observations: np.ndarray) -> np.ndarray:
    """`[episodes, horizon, 2 obs + 4]`: the authors' features of every step."""
    o = np.clip(observations, -10.0, 10.0)
    t = np.broadcast_to((np.arange(observations.shape[1]) / 100.0)[None, :, None], observations.shape[:2] + (1,))
    return np.concatenate([o, o ** 2, t, t ** 2, t ** 3, np.ones_like(t)], axis=-1)


def fit_linear_baseline(observations: np.ndarray, returns: np.ndarray, mask: np.ndarray,
                        reg_coeff: float = 1e-5) -> np.ndarray:
    """The coefficients of the authors' linear baseline fitted to `returns` on the masked steps."""
    valid = mask.reshape(-1) > 0
    features = baseline_features(observations).reshape(-1, observations.shape[-1] * 2 + 4)[valid]
    targets = returns.reshape(-1)[valid]
    gram, moment = features.T @ features, features.T @ targets
    for _ in range(5):
        coeffs = np.linalg.lstsq(gram + reg_coeff * np.identity(gram.shape[0]), moment, rcond=None)[0]
        if not np.any(np.isnan(coeffs)):
            break
        reg_coeff *= 10
    return coeffs


def advantages(observations: np.ndarray, rewards: np.ndarray, mask: np.ndarray, discount: float = 0.99,
               gae_lambda: float = 1.0, center: bool = True):
    """`(returns, advantages, baseline)` `[episodes, horizon]` of one task's episodes (see the module)."""
    returns = discounted_cumsum(rewards, mask, discount)
    coeffs = fit_linear_baseline(observations, returns, mask)
    baseline = (baseline_features(observations) @ coeffs) * (mask > 0)
    next_valid = np.concatenate([mask[:, 1:], np.zeros_like(mask[:, :1])], axis=1) > 0
    following = np.where(next_valid, np.concatenate([baseline[:, 1:], np.zeros_like(baseline[:, :1])], axis=1), 0.0)
    deltas = rewards + discount * following - baseline
    adv = discounted_cumsum(deltas, mask, discount * gae_lambda)
    if center:
        steps = adv[mask > 0]
        adv = np.where(mask > 0, (adv - steps.mean()) / (steps.std() + 1e-8), 0.0)
    return returns, adv, baseline
