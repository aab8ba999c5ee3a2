"""The task-batch type shared by the data sources and the algorithms (no TensorFlow import)."""

from __future__ import annotations

from typing import Any, NamedTuple


class TaskBatch(NamedTuple):
    """A meta-batch of tasks; every field has a leading task axis.

    support_x: [tasks, num_support, ...]; support_y: [tasks, num_support, out]
    query_x:   [tasks, num_query, ...];   query_y:   [tasks, num_query, out]
    """

    support_x: Any
    support_y: Any
    query_x: Any
    query_y: Any
