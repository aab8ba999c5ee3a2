"""The pieces every algorithm of the MAML family is composed of (see docs/architecture.md).

- `params`: parameter arithmetic over lists (or nests) of tensors.
- `inner`: inner optimisers as `(init, update)` pairs, one inner step, and the
  inner loop that returns the trajectory (Python-unrolled, or a `tf.while_loop`).
- `objective`: the meta-objective as weights over the inner steps.
- `outer`: the one outer update (clipping, loss scaling, the optimiser; the
  place of a distributed all-reduce).
- `hvp`: Hessian-vector products and conjugate gradient.
- `execution`: how the tasks of a meta-batch are mapped (`tf.map_fn`, or all
  at once through the task-batched network), apart from the maths.

The forward pass itself is `maml_tf.functional.functional_call`.
"""
