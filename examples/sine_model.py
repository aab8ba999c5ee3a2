"""The subclassed model and task sampler shared by the sinusoid examples (no flags: importable)."""

import keras
import numpy as np


@keras.saving.register_keras_serializable(package="examples")
class SineNet(keras.Model):
    """Your own subclassed model: 1 -> 40 -> 40 -> 1 with ReLUs."""

    def __init__(self, hidden=40, **kwargs):
        super().__init__(**kwargs)
        self.hidden = hidden
        self.body = [keras.layers.Dense(hidden, activation="relu"), keras.layers.Dense(hidden, activation="relu")]
        self.head = keras.layers.Dense(1)

    def call(self, x):
        for layer in self.body:
            x = layer(x)
        return self.head(x)

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden}


def sample_sinusoid(rng, num_points):
    amplitude, phase = rng.uniform(0.1, 5.0), rng.uniform(0.0, np.pi)
    x = rng.uniform(-5.0, 5.0, (num_points, 1))
    return x, amplitude * np.sin(x - phase)
