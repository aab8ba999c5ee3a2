"""The original networks' settings for each datasource (no TensorFlow import): what `maml_tf.networks` builds and
`Config.validate` checks. They are the network's business, not the datasource's: the datasource registry
(`maml_tf.data`) holds tasks and the evaluation protocol only."""

from __future__ import annotations

import dataclasses
from typing import Dict, Tuple


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """The original network of a datasource.

    Attributes:
      fc_hidden: hidden sizes of the fully connected network (`--conv=False`, and every regression datasource).
      conv_head: 'mean' (spatial mean, Omniglot) or 'flatten' (MiniImagenet) after the conv stages.
      needs_max_pool: the conv net's head assumes max-pooling (MiniImagenet's flattens a 5x5 map).
    """

    fc_hidden: Tuple[int, ...] = (256, 128, 64, 64)
    conv_head: str = "mean"
    needs_max_pool: bool = False


ORIGINAL_NETWORKS: Dict[str, NetworkSpec] = {
    "sinusoid": NetworkSpec(fc_hidden=(40, 40)),
    "bmaml_sinusoid": NetworkSpec(fc_hidden=(40, 40, 40)),  # BMAML's authors' 3 x 40 network.
    "sine_line": NetworkSpec(fc_hidden=(40, 40)),
    "multimodal_regression": NetworkSpec(fc_hidden=(100, 100, 100)),  # MMAML's authors' 3 x 100 network.
    "omniglot": NetworkSpec(),
    "miniimagenet": NetworkSpec(conv_head="flatten", needs_max_pool=True),
}


def network_spec(datasource: str) -> NetworkSpec:
    """The original network's settings for `datasource` (the defaults for one without an entry)."""
    return ORIGINAL_NETWORKS.get(datasource, NetworkSpec())
