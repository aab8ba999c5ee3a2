"""The structure every algorithm is composed on: chainable update links (a trust-region step among them), tasks as
any nested structure with a view of their own, task sources that call the learner, and a training program that
names no algorithm."""

import dataclasses
import json
import os
import pathlib
import re
import tokenize

import numpy as np
import pytest
import tensorflow as tf

from maml_tf import algorithms, losses, train
from maml_tf.algorithms import MAML
from maml_tf.config import Config, ConfigError
from maml_tf.core.execution import TaskView
from maml_tf.core.transforms import apply_updates, chain, clip_by_value, scale_by_adam, trust_region
from maml_tf.data import DATASOURCES
from maml_tf.data.sinusoid import SinusoidTasks
from maml_tf.types import TaskBatch
from tests.test_meta_sgd_anil import batch64, fc64

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ update links
def test_links_chain_in_order_with_their_states():
    opt = chain(clip_by_value(1.0), scale_by_adam(0.1, beta1=0.0, beta2=0.9, epsilon=0.0))
    w, g = [tf.constant([1.0, -1.0], tf.float64)], [tf.constant([3.0, -0.5], tf.float64)]
    state = opt.init(w)
    updates, state = opt.update(g, state, w)
    # Clipped to [1, -0.5]; Adam's first step is -lr * sign(g) with epsilon 0.
    np.testing.assert_allclose(apply_updates(w, updates)[0], [0.9, -0.9], rtol=1e-12)
    assert state[0] == () and int(state[1][2]) == 1
    with pytest.raises(ValueError):  # Another chain's state is an error, not silently skipped links.
        opt.update(g, (), w)


def quadratic_problem():
    """A linear objective `g . x` under the constraint `x^T A x / 2` (TRPO's models of surrogate and KL)."""
    a = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 3.0]])
    g = np.array([1.0, -2.0, 0.5])
    A = tf.constant(a)
    kwargs = dict(curvature_product=lambda v: [tf.linalg.matvec(A, v[0])],
                  objective=lambda step: tf.tensordot(tf.constant(g), step[0], 1),
                  constraint=lambda step: 0.5 * tf.tensordot(step[0], tf.linalg.matvec(A, step[0]), 1))
    return a, g, kwargs


def test_trust_region_step_is_the_natural_gradient_step_on_the_constraint():
    a, g, kwargs = quadratic_problem()
    delta = 1e6  # A huge bound: the full step is taken, and it is the natural gradient's.
    link = trust_region(delta, cg_iters=10, damping=0.0)
    step, (backtracks, accepted) = tf.function(
        lambda: link.update([tf.constant(g)], link.init(None), [tf.zeros(3, tf.float64)], **kwargs))()
    natural = np.linalg.solve(a, g)
    want = -np.sqrt(2 * delta / (g @ natural)) * natural
    np.testing.assert_allclose(step[0].numpy(), want, rtol=1e-9)
    assert bool(accepted) and int(backtracks) == 0
    np.testing.assert_allclose(0.5 * want @ a @ want, delta, rtol=1e-9)  # On the bound exactly.


def test_trust_region_step_keeps_the_bound_and_improves_or_is_zero():
    a, g, kwargs = quadratic_problem()
    curved = dict(kwargs, objective=lambda s: tf.reduce_sum(tf.exp(s[0])) + tf.tensordot(tf.constant(g), s[0], 1))
    grad = g + 1.0  # The gradient of `curved` at 0.
    link = trust_region(0.01)
    step, (backtracks, accepted) = link.update([tf.constant(grad)], link.init(None), [tf.zeros(3, tf.float64)],
                                               **curved)
    assert bool(accepted)
    assert float(curved["constraint"](step)) <= 0.01
    assert float(curved["objective"](step)) < float(curved["objective"]([tf.zeros(3, tf.float64)]))
    # A gradient of the wrong sign makes every tried step worse: rllab rejects the step.
    step, (backtracks, accepted) = link.update([tf.constant(-grad)], link.init(None), [tf.zeros(3, tf.float64)],
                                               **curved)
    assert not bool(accepted) and int(backtracks) == 15
    np.testing.assert_array_equal(step[0].numpy(), np.zeros(3))


# ------------------------------------------------------------- tasks as structures
class NamedTasksView(TaskView):
    """A kind of task stored as a dict with its own field names (and a field no loss reads)."""

    @staticmethod
    def check(batch):
        return batch

    @staticmethod
    def support(tasks):
        return tasks["train"]["inputs"], tasks["train"]["targets"]

    @staticmethod
    def query(tasks):
        return tasks["test"]["inputs"], tasks["test"]["targets"]


def as_named(batch: TaskBatch) -> dict:
    return {"train": {"inputs": batch.support_x, "targets": batch.support_y},
            "test": {"inputs": batch.query_x, "targets": batch.query_y},
            "task_id": tf.range(batch.support_x.shape[0], dtype=tf.float64)}


@pytest.mark.parametrize("batch_tasks", [False, True])
def test_a_new_kind_of_task_is_a_view_and_every_backend_maps_its_structure(batch_tasks):
    batch = batch64()
    reference = MAML(fc64(), losses.mse, inner_lr=0.1, num_inner_steps=2, batch_tasks=False)
    named = MAML(fc64(), losses.mse, inner_lr=0.1, num_inner_steps=2, batch_tasks=batch_tasks)
    named.task_view_class = NamedTasksView
    assert named.runs_batched(as_named(batch)) == batch_tasks
    want, want_results = reference.meta_gradients(batch)
    got, got_results = named.meta_gradients(as_named(batch))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got_results["objective_loss"], want_results["objective_loss"], rtol=1e-12)


# ------------------------------------------------------ sources that call the learner
class QueriesWhereTheLearnerErrs:
    """Sinusoid tasks whose query points are the candidates where the learner, adapted to the support set, errs
    most: each meta-batch depends on the weights the training has reached. Its draws come from a checkpointed
    `tf.random.Generator`, so a resumed run continues them."""

    calls = 0

    def __init__(self, config, seed):
        self.k, self.rng = config.update_batch_size, tf.random.Generator.from_seed(seed)

    def checkpoint_objects(self):
        return {"task_sampler": self.rng}

    def next_batch(self, meta_batch_size, learner):
        type(self).calls += 1
        amp = self.rng.uniform([meta_batch_size, 1, 1], 0.1, 5.0)
        phase = self.rng.uniform([meta_batch_size, 1, 1], 0.0, np.pi)
        sx = self.rng.uniform([meta_batch_size, self.k, 1], -5, 5)
        cx = self.rng.uniform([meta_batch_size, 20, 1], -5, 5)  # Candidate query points.
        sy, cy = amp * tf.sin(sx - phase), amp * tf.sin(cx - phase)
        errors = []
        for t in range(meta_batch_size):
            adapted = learner.adapt(sx[t], sy[t])
            errors.append(tf.reduce_sum(tf.square(learner.forward(adapted, cx[t]) - cy[t]), -1))
        hardest = tf.argsort(tf.stack(errors), axis=1, direction="DESCENDING")[:, :self.k]
        return TaskBatch(sx, sy, tf.gather(cx, hardest, batch_dims=1), tf.gather(cy, hardest, batch_dims=1))

    def batches(self, meta_batch_size, num_batches=None, start=0):  # Validation and testing: fixed tasks.
        return SinusoidTasks(self.k, self.k, 1).batches(meta_batch_size, num_batches, start)


def learner_dependent_tasks(config, split, seed):
    return QueriesWhereTheLearnerErrs(config, seed)


def test_a_source_that_calls_the_learner_resumes_exactly(tmp_path, monkeypatch):
    monkeypatch.setitem(DATASOURCES, "sinusoid", dataclasses.replace(
        DATASOURCES["sinusoid"], tasks=f"{__name__}:learner_dependent_tasks"))  # This module, as pytest imported it.
    flags = dict(norm="None", update_batch_size=3, meta_batch_size=2, metatrain_iterations=4, log=False,
                 progress=False)
    train.run(Config(**flags, logdir=str(tmp_path / "a")))
    assert QueriesWhereTheLearnerErrs.calls == 4
    train.run(Config(**{**flags, "metatrain_iterations": 2}, logdir=str(tmp_path / "b")))
    train.run(Config(**flags, logdir=str(tmp_path / "b")))  # Resumed from model-1 for iterations 2 and 3.
    folder = Config(**flags).exp_string()
    a, b = [tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path / run / folder))) for run in "ab"]
    names = [n for n in a.get_variable_to_shape_map() if not n.startswith(("_CHECKPOINTABLE", "save_counter"))]
    assert any(n.startswith("task_sampler/") for n in names)  # The source's random state is checkpointed.
    for name in names:
        np.testing.assert_array_equal(a.get_tensor(name), b.get_tensor(name), err_msg=name)


# ------------------------------------------------------------ no algorithm named
def string_literals(path: pathlib.Path):
    with open(path, "rb") as f:
        for token in tokenize.tokenize(f.readline):
            if token.type == tokenize.STRING:
                yield token.start[0], token.string


def test_no_file_outside_the_algorithms_names_an_algorithm():
    names = {name for name, entry in algorithms.ALGORITHMS.items()} | {
        alias for entry in algorithms.ALGORITHMS.values() for alias in entry.aliases}
    quoted = {q + n + q for n in names for q in ("'", '"')}
    # `original.py` loads the original code, whose module is `maml.py`: a file name there, not an algorithm.
    files = [ROOT / "main.py"] + [p for p in (ROOT / "maml_tf").rglob("*.py")
                                  if (ROOT / "maml_tf" / "algorithms") not in p.parents and p.name != "original.py"]
    found = [f"{p.relative_to(ROOT)}:{line}: {text}" for p in files for line, text in string_literals(p)
             if text in quoted]
    assert not found, "algorithm names outside maml_tf/algorithms/:\n" + "\n".join(found)
    # And the program asks no algorithm what it is: it reads what the algorithm declares.
    program = [ROOT / "maml_tf" / "train.py"] + list((ROOT / "maml_tf" / "training").glob("*.py"))
    for path in program:
        text = path.read_text()
        assert "hasattr(algo" not in text and ".algorithm ==" not in text and "isinstance(algo" not in text, path


# ------------------------------------------------------- options and reported results
def test_a_shared_flag_the_algorithm_does_not_use_stops_with_its_own_flag():
    for algorithm, flag, own in (("reptile", "num_updates", "--reptile_inner_iters"),
                                 ("reptile", "update_lr", "--reptile_learning_rate"),
                                 ("imaml", "update_lr", "--imaml_inner_lr"),
                                 ("maml++", "update_lr", "--mamlpp_init_inner_lr")):
        message = re.escape(f"--{flag} is not used by --algorithm={algorithm}: ") + f".*{own}"
        with pytest.raises(ConfigError, match=message):
            Config(algorithm=algorithm, given=[flag]).validate()
    Config(algorithm="maml", given=["update_lr", "num_updates"]).validate()  # MAML's own flags.


def test_reptile_with_several_reported_steps_validates_its_epochs(tmp_path):
    """Reptile reports one step (the end of its inner loop): epochs validate there whatever --num_updates is."""
    config = Config(algorithm="reptile", norm="None", update_batch_size=3, meta_batch_size=2, num_updates=3,
                    metatrain_iterations=4, epoch_iterations=2, val_tasks=3, reptile_inner_iters=2,
                    reptile_eval_iters=2, reptile_inner_batch=3, reptile_eval_batch=3, log=False, progress=False,
                    logdir=str(tmp_path)).validate()
    train.run(config)
    with open(os.path.join(train.experiment_dir(config), "epochs.json")) as f:
        records = json.load(f)["epochs"]
    assert [r["epoch"] for r in records] == [1, 2] and all(np.isfinite(r["val"]) for r in records)
