"""The convolutions a TensorFlow graph runs, and their FLOPs (used by `conv_floor.py` and `bench_original.py`).

A convolution is keyed by `(op type, input shape, kernel shape, output (or
output-gradient) shape, attributes)`: the same key runs at the same speed.
`count_convolutions` counts the ops of a `tf.function`'s graph that feed its
results (TensorFlow prunes the rest); `count_traced_v1` those a TF 1 session
executed.
"""

import collections

import numpy as np
import tensorflow as tf

CONVOLUTIONS = ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter")
_ATTRS = ("strides", "padding", "explicit_paddings", "dilations", "data_format")


def _shape(tensor):
    shape = tensor.shape
    if not shape.is_fully_defined():
        raise ValueError(f"{tensor.name} has no static shape ({shape}): cannot count its FLOPs.")
    return tuple(shape.as_list())


def key(op):
    """(type, x shape, filter shape, output-gradient/output shape, attributes) of a convolution."""
    if op.type == "Conv2D":
        x, w, y = _shape(op.inputs[0]), _shape(op.inputs[1]), _shape(op.outputs[0])
    elif op.type == "Conv2DBackpropInput":
        x, w, y = _shape(op.outputs[0]), _shape(op.inputs[1]), _shape(op.inputs[2])
    else:
        x, w, y = _shape(op.inputs[0]), _shape(op.outputs[0]), _shape(op.inputs[2])
    attrs = tuple((a, tuple(v) if isinstance(v, list) else v) for a in _ATTRS for v in [op.get_attr(a)])
    return op.type, x, w, y, attrs


def flops(conv) -> int:
    """2 * multiply-adds of the convolution keyed `conv`: each output (or output-gradient) element meets one
    kernel window."""
    _, _, (kh, kw, cin, _), y, _ = conv
    return 2 * int(np.prod(y)) * kh * kw * cin


def live_ops(targets):
    """The ops that `targets` (ops) depend on, through data and control edges (what TensorFlow keeps)."""
    stack, seen = list(targets), set()
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return [op for op in targets[0].graph.get_operations() if op.name in seen] if targets else []


def count_convolutions(graph, times: int = 1, counts=None) -> collections.Counter:
    """{convolution key: runs per call of `graph`}, through nested functions and while loops."""
    counts = collections.Counter() if counts is None else counts
    for op in live_ops([t.op for t in graph.outputs] + list(graph.control_outputs)):
        if op.type in CONVOLUTIONS:
            counts[key(op)] += times
        elif op.type in ("While", "StatelessWhile"):
            trips = tf.get_static_value(op.inputs[1])  # while_v2's loop vars: counter, maximum_iterations, ...
            if trips is None or trips < 0:
                raise ValueError(f"{op.name}: a while loop without a static trip count.")
            count_convolutions(graph._get_function(op.get_attr("body").name).graph, times * int(trips), counts)
        elif op.type in ("PartitionedCall", "StatefulPartitionedCall"):
            count_convolutions(graph._get_function(op.get_attr("f").name).graph, times, counts)
        elif op.type in ("If", "StatelessIf", "Case", "StatelessCase"):
            raise ValueError(f"{op.name}: conditionals are not counted.")
    return counts


def count_traced_v1(session, fetch, feed) -> collections.Counter:
    """{convolution key: runs} of one traced `session.run(fetch, feed)` in a TF 1 graph (the original's): the
    convolutions the runtime executed, loop iterations included. (What runs depends on the session: the
    original's graph holds input gradients of the first layer that no op uses, which a plain `Session`'s
    graph optimisations prune and an `InteractiveSession` computes.) Each executed node is keyed by the graph's
    op of its name, or, for a convolution fused with its bias add (named after the add), by the convolution
    that feeds that op."""
    v1 = tf.compat.v1
    meta = v1.RunMetadata()
    session.run(fetch, feed, options=v1.RunOptions(trace_level=v1.RunOptions.FULL_TRACE), run_metadata=meta)
    counts = collections.Counter()
    for device in meta.step_stats.dev_stats:
        for node in device.node_stats:
            kernel = node.timeline_label.partition(" = ")[2].partition("(")[0]  # "name = Kernel(inputs)"
            if "Conv2D" not in kernel:
                continue
            op = session.graph.get_operation_by_name(node.node_name)
            conv = op if op.type in CONVOLUTIONS else next(t.op for t in op.inputs if t.op.type in CONVOLUTIONS)
            counts[key(conv)] += 1
    return counts


def summary(counts) -> dict:
    """{"runs": {op type: runs}, "gflop": total GFLOP} of `counts`."""
    runs = collections.Counter()
    for k, n in counts.items():
        runs[k[0]] += n
    return {"runs": dict(runs), "gflop": round(sum(n * flops(k) for k, n in counts.items()) / 1e9, 3)}
