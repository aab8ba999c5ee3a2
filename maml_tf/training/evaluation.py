"""The test protocols of `main.py --train=False`: the original's 600 tasks, the ensemble of the best epochs, and
the evaluators an algorithm offers (`MetaLearner.evaluators`, looked up by name in `EVALUATORS`)."""

from __future__ import annotations

import csv
import json
import os
import pickle
from typing import Dict

import numpy as np
import tensorflow as tf

from maml_tf import uncertainty
from maml_tf.config import Config
from maml_tf.data import TEST_SEED, make_tasks
from maml_tf.plotting import plot_sinusoid, plot_task_embeddings
from maml_tf.training.epochs import Epochs
from maml_tf.training.progress import Progress


def test(config: Config, algo, directory: str) -> Dict[str, np.ndarray]:
    """The original test: 600 tasks, meta-batch 1, seeds 1.

    Records the query accuracy (MSE for sinusoid) before adaptation and after
    each of `test_num_updates` steps, prints means, standard deviations and
    95% intervals, and writes `test_ubs{K}_stepsize{lr}.csv` and `.pkl`.

    Returns:
      `{'values': [tasks, steps+1], 'means', 'stds', 'ci95', 'csv', 'pkl'}`.
    """
    split = "test" if config.test_set else "val"
    tasks = make_tasks(config, split, TEST_SEED)
    num_steps = config.num_steps_reported
    rows = []
    progress = Progress(config.num_test_tasks, config.progress)
    for i, batch in enumerate(tasks.batches(1, config.num_test_tasks)):
        r = algo.evaluate(batch, num_steps)
        if config.classification:
            rows.append(np.concatenate([[r["total_accuracy1"]], r["total_accuracies2"]]))
        else:
            rows.append(np.concatenate([[r["total_loss1"]], r["total_losses2"]]))
        progress.update(i)
    progress.close()
    values = np.array(rows)
    means, stds = values.mean(0), values.std(0)
    ci95 = 1.96 * stds / np.sqrt(len(values))
    print("Mean validation accuracy/loss, stddev, and confidence intervals")
    print((means, stds, ci95))  # As the original prints it; the table says the same with labels.
    medians = np.median(np.where(np.isnan(values), np.inf, values), 0)  # A diverged (NaN) task counts as worst.
    what = "accuracy" if config.classification else "MSE"
    paper = config.options.paper_results(config)  # The paper's numbers for this protocol, by inner step.
    print(f"\nQuery {what} after each inner step ({len(values)} tasks of the {split} split; step 0: before "
          f"adaptation):\n\n| step | mean | 95% interval | median |" + (" paper |\n|---|---|---|---|---|" if paper else
                                                                         "\n|---|---|---|---|"))
    for j in range(len(means)):
        row = f"| {j} | {means[j]:.4g} | {means[j] - ci95[j]:.4g} to {means[j] + ci95[j]:.4g} | {medians[j]:.4g} |"
        print(row + (f" {paper.get(j, '')} |" if paper else ""))
    os.makedirs(directory, exist_ok=True)
    stem = os.path.join(directory, config.test_file_stem())
    with open(stem + ".pkl", "wb") as f:
        pickle.dump({"mses": values}, f)
    with open(stem + ".csv", "w", newline="") as f:
        writer = csv.writer(f, delimiter=",")
        writer.writerow([f"update{i}" for i in range(len(means))])
        writer.writerow(means)
        writer.writerow(stds)
        writer.writerow(ci95)
    print(f"Wrote {stem}.csv and {stem}.pkl")
    out = {"values": values, "means": means, "stds": stds, "ci95": ci95, "csv": stem + ".csv", "pkl": stem + ".pkl"}
    if config.test_ensemble and os.path.exists(os.path.join(directory, "epochs.json")):
        out["ensemble"] = test_ensemble(config, algo, directory, split)
    context = {"stem": stem, "split": split}
    for name in algo.evaluators:  # What the algorithm offers beyond the original's test, looked up by name.
        out.update(EVALUATORS[name](config, algo, context))
    return out


def adapted_function_figure(config: Config, algo, context: dict) -> Dict[str, object]:
    """The paper's Figure 2 on the sinusoid: the function before adaptation and after 1 and 10 steps (an algorithm
    that adapts one set of weights: `adapt`)."""
    if config.datasource != "sinusoid":
        return {}
    path = plot_sinusoid(config, algo, context["stem"] + ".png")
    print(f"Wrote {path}")
    return {"figure": path}


def _predictive_tasks(config: Config, context: dict):
    """The test tasks as `test` draws them, with their descriptions (regression) or as meta-batches of one; drawn
    once and kept in `context` for the evaluators after the first."""
    if "tasks" not in context:
        source = make_tasks(config, context["split"], TEST_SEED)
        if config.classification:
            context["tasks"] = source, list(source.batches(1, config.num_test_tasks))
        else:
            context["tasks"] = source, [task for _ in range(config.num_test_tasks) for task in source.sample_tasks(1)]
    return context["tasks"]


def predictive_measures(config: Config, algo, context: dict) -> Dict[str, object]:
    """The predictive distribution's measures (`maml_tf.uncertainty`) on the same tasks as `test`, after as many
    inner steps as training took (`--num_updates`), written to `<stem>.uncertainty.json`; for regression also its
    samples on four tasks (`<stem>.samples.png`)."""
    if config.baseline == "oracle":  # Its inputs carry the task: no predictive distribution to measure.
        return {}
    steps, stem = config.num_updates, context["stem"]
    source, tasks = _predictive_tasks(config, context)
    if config.classification:
        result = uncertainty.evaluate_classification(algo, tasks, steps)
        uncertainty.report(result, stem + ".uncertainty.json")
        return {"uncertainty": result}
    result = uncertainty.evaluate_regression(algo, tasks, steps)
    uncertainty.report(result, stem + ".uncertainty.json")
    shown = max(4, len(getattr(source, "families", ())))  # Tasks of every mode on a multimodal datasource.
    figure = uncertainty.plot_samples(algo, tasks[:shown], stem + ".samples.png", steps,
                                      title=f"{config.algorithm}, {config.datasource}, K={config.update_batch_size}, "
                                            f"{steps} step(s)")
    print(f"Wrote {figure}")
    return {"uncertainty": result, "samples_figure": figure}


def task_embeddings_figure(config: Config, algo, context: dict) -> Dict[str, object]:
    """The task encoder's embeddings of the regression test tasks, by mode (`algo.task_embedding`)."""
    if config.classification or config.baseline == "oracle":
        return {}
    _, tasks = _predictive_tasks(config, context)
    path = plot_task_embeddings(algo, tasks, context["stem"] + ".embeddings.png")
    print(f"Wrote {path}")
    return {"embeddings_figure": path}


# What `test` runs after the original's protocol for an algorithm that lists the name in `MetaLearner.evaluators`:
# `evaluator(config, algo, {"stem": test files' path stem, "split": ...}) -> entries of test's result`.
EVALUATORS = {
    "adapted_function": adapted_function_figure,
    "predictive": predictive_measures,
    "embeddings": task_embeddings_figure,
}


def test_ensemble(config: Config, algo, directory: str, split: str) -> Dict[str, object]:
    """MAML++'s evaluation: the `--test_ensemble` best epoch checkpoints by validation score, each adapted to
    the same tasks; the ensemble predicts with the mean of their outputs after the last reported step.

    Prints and writes `<test stem>.ensemble.json`: the ensemble's and the best
    checkpoint's mean query accuracy (MSE) over the tasks with 95% intervals.
    Leaves the last checkpoint evaluated restored.
    """
    epochs = Epochs(config, algo, directory, resume_itr=2 ** 62)
    chosen = epochs.best(config.test_ensemble)
    if not chosen:
        print("No epoch checkpoint to ensemble (--keep_best=0?).")
        return {}
    num_steps = config.num_steps_reported
    batches = list(make_tasks(config, split, TEST_SEED).batches(1, config.num_test_tasks))  # Drawn once for all.
    labels = np.stack([np.asarray(batch.query_y[0]) for batch in batches])
    outputs = []
    for record in chosen:
        tf.train.Checkpoint(**algo.checkpoint_objects()).read(
            os.path.join(directory, "epochs", record["checkpoint"])).expect_partial()
        per_task = []
        for batch in batches:
            results = algo.evaluate(batch, num_steps)
            if "query_outputs" not in results:
                print(f"No ensemble: --algorithm={config.algorithm}'s evaluation does not return its outputs.")
                return {}
            per_task.append(results["query_outputs"][0, -1].numpy())
        outputs.append(np.stack(per_task))

    def score(out):
        if config.classification:
            return (out.argmax(-1) == labels.argmax(-1)).mean(-1)
        return ((out.reshape(labels.shape) - labels) ** 2).mean(-1)

    what = "accuracy" if config.classification else "MSE"
    rows = {"ensemble": score(np.mean(outputs, 0)), "best": score(outputs[0])}
    result = {"epochs": [r["epoch"] for r in chosen], "val": [r["val"] for r in chosen], "steps": num_steps}
    print(f"\nEnsemble of the {len(chosen)} best epochs by validation {what} (epochs "
          f"{', '.join(str(r['epoch']) for r in chosen)}), {len(labels)} tasks of the {split} split, after "
          f"{num_steps} steps:\n\n| model | mean | 95% interval |\n|---|---|---|")
    for name, values in rows.items():
        mean, ci = float(values.mean()), float(1.96 * values.std() / np.sqrt(len(values)))
        result[name] = {"mean": mean, "ci95": ci}
        label = f"best epoch ({chosen[0]['epoch']})" if name == "best" else f"ensemble of {len(chosen)}"
        print(f"| {label} | {mean:.4g} | {mean - ci:.4g} to {mean + ci:.4g} |")
    path = os.path.join(directory, config.test_file_stem() + ".ensemble.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"Wrote {path}")
    return result
