"""Compare this port with the original code (github.com/cbfinn/maml) on any configuration, in one command.

    python -m maml_tf.compare --original_dir=DIR <the original main.py's flags> [--out=FOLDER]

runs the unmodified original (from a checkout `DIR`, under `tf.compat.v1` in a
process of its own: `maml_tf/original.py`) and this port side by side:

1. gradients: the same initial weights (the original's initialisers) and the
   same task batch through both; outputs, the loss after each inner step and
   the meta-gradient of every variable, with relative errors (the port in
   float32, as the original, and in float64, nearer the exact values).
2. curves: both trained for `--iterations` from those weights on the same task
   stream; training and validation losses of both against the iteration, and
   the iteration where float rounding makes them part (`curves.png`).
3. cross_eval: checkpoints (`--checkpoint`, and after `curves` the final
   weights of each program) evaluated by both on the same test tasks (600, as
   the original `test()`): means, 95% intervals, the largest per-task
   difference and how many tasks differ at all.

Both programs see the port's tasks, fed through placeholders of the original's
graphs (as its main.py feeds sinusoid batches). For Omniglot the original's
`DataGenerator` is also run (with a sorted directory listing, see
`maml_tf/original.py`) and its character split compared with the port's.

Writes `report.md` and `report.json` (and `curves.png`, checkpoints of both
programs in TF1 format) to `--out`; exits with status 1 when parity fails
beyond the tolerances below, 2 for a bad flag. docs/porting.md has examples.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from typing import Dict, List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from maml_tf import cli  # noqa: E402
from maml_tf.config import ConfigError  # noqa: E402

PROGRAM = "python -m maml_tf.compare"
PARTS = ("gradients", "curves", "cross_eval")
# Gradient parity, per tensor, on relative errors (max |a - b| over max |original|): the original (float32) against
# the float64 port (nearly exact arithmetic) may differ by ROUNDING_FACTOR times what float32 rounding does to the
# port itself in this configuration (the float32 port against the float64 one), or by the floor below, whichever is
# larger. Rounding alone moves well-conditioned tensors by about 1e-7 and the golden files' by up to 4e-5; it
# moves more where a ReLU input or a max-pool choice lies within rounding of a tie, or where batch norm divides by
# a tiny variance (few filters), and then the original's own float32 does too.
TOLERANCES = {"outputs": 1e-4, "meta_gradient": 1e-3}
ROUNDING_FACTOR = 10.0
# Cross-evaluation passes when, after every inner step, the two programs' means over the test tasks differ by at
# most this share of the original's 95% interval (half-width).
MEAN_TOLERANCE = 0.25

FLAGS = flags.FLAGS


@dataclasses.dataclass
class Comparison:
    """What one run of the command found; `report.json` is its `asdict`."""

    config: Dict
    passed: bool = True
    failures: List[str] = dataclasses.field(default_factory=list)
    gradients: Optional[Dict] = None
    curves: Optional[Dict] = None
    cross_eval: Dict = dataclasses.field(default_factory=dict)
    split: Optional[Dict] = None
    seconds: Dict = dataclasses.field(default_factory=dict)

    def fail(self, message: str) -> None:
        self.passed = False
        self.failures.append(message)


# ----------------------------------------------------------------------------------------------- helpers
def rel_err(got, expected, scale=None) -> float:
    """Max |got - expected| over the largest |expected| (or `scale`)."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    scale = np.max(np.abs(expected)) if scale is None else scale
    return float(np.max(np.abs(got - expected)) / max(float(scale), 1e-30))


def original_flags(config) -> Dict:
    """The original main.py's flags for a `Config` (the fields share their names)."""
    from maml_tf.original import ORIGINAL_FLAGS

    values = {name: getattr(config, name) for name in ORIGINAL_FLAGS if hasattr(config, name)}
    values["baseline"] = config.baseline or ""
    return values


def to_original(batch) -> Dict:
    """A port `TaskBatch` as the original's placeholders take it: float32, each example flattened."""
    def flat(a):
        a = np.asarray(a, np.float32)
        return a.reshape(a.shape[0], a.shape[1], -1)

    return {"inputa": flat(batch.support_x), "labela": flat(batch.support_y), "inputb": flat(batch.query_x),
            "labelb": flat(batch.query_y)}


def stack_tasks(batches) -> Dict:
    arrays = [to_original(b) for b in batches]
    return {k: np.concatenate([a[k] for a in arrays]) for k in arrays[0]}


def port_algorithm(config, dtype: str = "float32", weights: Optional[Dict] = None):
    """The port's MAML for `config` (the code path of main.py), with weights by original name."""
    from maml_tf import networks, train
    from maml_tf.tf1_checkpoint import assign_by_original_names

    algo = train.build_algorithm(config, networks.build_network(config, dtype))
    if weights is not None:
        assign_by_original_names(algo.model, weights)
    return algo


def port_weights(algo) -> Dict:
    from maml_tf.networks import original_variable_names

    return {n: v.numpy() for n, v in zip(original_variable_names(algo.model), algo.model.trainable_variables)}


def _fmt(x: float) -> str:
    return f"{x:.1e}"


# ----------------------------------------------------------------------------------------------- 1. gradients
def compare_gradients(config, worker, init: Dict, batch, result: Comparison) -> None:
    """One training batch (`batch`, a `TaskBatch`) through both: outputs, per-step losses, the meta-gradient per
    variable.

    Every tensor is compared three ways: the original against the float64 port
    (nearly exact arithmetic), the original against the float32 port, and the
    float32 port against the float64 one, which measures how far float32 rounding
    moves that tensor in this configuration. Parity holds when the original is
    within `ROUNDING_FACTOR` times that of the float64 port, or within the
    `TOLERANCES` floor.
    """
    import tensorflow as tf

    from maml_tf.networks import original_variable_names

    theirs = worker.call("meta_gradient", batch=to_original(batch))
    steps = config.num_steps_reported
    clipped = "unclipped" in theirs  # MiniImagenet: the original clips to [-10, 10] before Adam.
    names = [n for n in theirs["grads"] if not (config.norm == "batch_norm" and _before_batch_norm(n, config))]

    def flat(outputas, outputbs, loss1, losses2, grads, unclipped):
        out = {"support outputs": outputas, "loss before adaptation": loss1}
        for j in range(steps):
            out[f"query outputs after step {j + 1}"] = outputbs[j]
            out[f"loss after step {j + 1}"] = losses2[j]
        for n in names:
            out[f"meta-gradient {n}"] = grads[n]
            if clipped:
                out[f"meta-gradient {n} (unclipped)"] = unclipped[n]
        return {k: np.asarray(v, np.float64) for k, v in out.items()}

    tensors = {"original": flat(theirs["outputas"], theirs["outputbs"], theirs["total_loss1"],
                                theirs["total_losses2"], theirs["grads"], theirs.get("unclipped"))}
    for dtype in ("float64", "float32"):
        algo = port_algorithm(config, dtype, init)
        cast = tf.nest.map_structure(lambda t, dtype=dtype: tf.cast(t, dtype), batch)
        grads, out = tf.function(lambda b, algo=algo: algo.meta_gradients(b, num_steps=steps))(cast)
        port_names = original_variable_names(algo.model)
        query = np.asarray(out["query_outputs"])
        tensors[dtype] = flat(out["support_outputs"], [query[:, j] for j in range(steps)], out["total_loss1"],
                              out["total_losses2"], dict(zip(port_names, algo.clip(grads))),
                              dict(zip(port_names, grads)))
    rows = {}
    for key, expected in tensors["original"].items():
        # A clipped meta-gradient's errors are measured on the unclipped scale (clipping is 1-Lipschitz).
        scale_key = key + " (unclipped)" if clipped and key.startswith("meta-gradient") and \
            not key.endswith("(unclipped)") else key
        scale = np.max(np.abs(tensors["original"][scale_key]))
        rows[key] = {"float64": rel_err(tensors["float64"][key], expected, scale),
                     "float32": rel_err(tensors["float32"][key], expected, scale),
                     "rounding": rel_err(tensors["float32"][key], tensors["float64"][key], scale)}
    judge_gradients(rows, result)
    grad_rows = [r for k, r in rows.items() if k.startswith("meta-gradient")]
    other_rows = [r for k, r in rows.items() if not k.startswith("meta-gradient")]
    result.gradients = {"steps": steps, "tensors": rows, "summary": {
        f"{what}_{col}": max(r[col] for r in group) for what, group in (("outputs", other_rows),
                                                                       ("meta_gradient", grad_rows))
        for col in ("float64", "float32", "rounding")}}


def judge_gradients(rows: Dict[str, Dict], result: Comparison) -> None:
    """Marks each tensor's row `allowed` and `passed` (see `TOLERANCES`), and `result` failed if one is not."""
    for key, row in rows.items():
        floor = TOLERANCES["meta_gradient" if key.startswith("meta-gradient") else "outputs"]
        row["allowed"] = max(floor, ROUNDING_FACTOR * row["rounding"])
        row["passed"] = bool(row["float64"] <= row["allowed"])  # NaN fails.
    bad = [k for k, r in rows.items() if not r["passed"]]
    if bad:
        worst = max(bad, key=lambda k: rows[k]["float64"] / max(rows[k]["allowed"], 1e-30))
        result.fail(f"gradients: {len(bad)} tensors differ beyond the tolerance, worst {worst}: "
                    f"{_fmt(rows[worst]['float64'])} > {_fmt(rows[worst]['allowed'])}")


def _before_batch_norm(name: str, config) -> bool:
    """Biases that a batch norm follows (their meta-gradient is 0): every conv/hidden bias but the last layer's."""
    if config.datasource != "sinusoid" and config.conv:
        return name.startswith("model/Variable")  # b1..b4 of the conv net; b5 is `model/b5`.
    # FC net: unnamed w1, b1, w2, b2, ...: the odd ones are biases; the output layer's is the last.
    if not name.startswith("model/Variable_"):
        return False  # w1 (`model/Variable`) or a norm's offset.
    index = int(name.rsplit("_", 1)[-1])
    return index % 2 == 1 and index < 2 * len(config.network_spec.fc_hidden)


# ----------------------------------------------------------------------------------------------- 2. curves
def learning_curves(config, worker, init: Dict, iterations: int, val_interval: int, part_tolerance: float,
                    result: Comparison):
    """Both programs trained on the same stream from the same weights; returns the port's trained algorithm.

    Ctrl-C stops both after the iteration in flight; the iterations done are
    reported (`curves['interrupted']`).
    """
    from maml_tf.data import make_tasks
    from maml_tf.training.progress import Progress

    algo = port_algorithm(config, "float32", init)
    classification = config.classification
    pretrain = config.effective_pretrain_iterations
    train_tasks = make_tasks(config, "train", config.seed).batches(config.meta_batch_size)
    val_split = "val" if classification else "train"  # Sinusoid tasks have no split.
    val_tasks = make_tasks(config, val_split, config.seed + 1).batches(config.meta_batch_size)
    keys = ["pre_loss", "post_loss"] + (["pre_accuracy", "post_accuracy"] if classification else [])
    port_keys = {"pre_loss": "total_loss1", "post_loss": "total_losses2", "pre_accuracy": "total_accuracy1",
                 "post_accuracy": "total_accuracies2"}
    last = config.num_updates - 1

    def port_values(out):
        return {k: float(np.asarray(out[port_keys[k]])[last] if k.startswith("post") else out[port_keys[k]])
                for k in keys}

    def record(prefix, iteration, mine, theirs):
        curves[prefix + "iteration"].append(iteration)
        for k in keys:
            curves[prefix + "port"][k].append(mine[k])
            curves[prefix + "original"][k].append(theirs[k])

    curves = {"iteration": [], "original": {k: [] for k in keys}, "port": {k: [] for k in keys},
              "val_iteration": [], "val_original": {k: [] for k in keys}, "val_port": {k: [] for k in keys},
              "interrupted": False}
    progress = Progress(iterations, config.progress)
    print(f"curves: {iterations} iterations of each program", flush=True)
    start = time.time()
    itr = 0
    try:
        for itr in range(iterations):
            batch = next(train_tasks)
            pretraining = itr < pretrain
            worker.submit("train_step", batch=to_original(batch), pretrain=pretraining)  # Runs while the port does.
            if pretraining:
                out = algo.evaluate(batch, config.num_updates)  # The original reads these before its update.
                algo.pretrain_step(batch)
            else:
                out = algo.train_step(batch, config.num_updates)
            record("", itr, port_values(out), worker.result())
            if (itr + 1) % val_interval == 0 or itr == iterations - 1:
                val = next(val_tasks)
                worker.submit("validate", batch=to_original(val))
                mine = port_values(algo.evaluate(val, config.num_updates))
                record("val_", itr, mine, worker.result())
            progress.update(itr)
    except KeyboardInterrupt:
        curves["interrupted"] = True
        while worker.pending:  # The original finishes its step in flight (it does not get the signal).
            worker.result()
        print(f"\ncurves: interrupted; reporting the iterations before {itr}.", flush=True)
    progress.close()
    result.seconds["curves"] = round(time.time() - start, 1)
    done = min(len(curves["port"]["post_loss"]), len(curves["original"]["post_loss"]))  # Both programs' records.
    if not done:
        raise KeyboardInterrupt  # Interrupted before the first iteration: nothing to report.
    curves["iteration"] = curves["iteration"][:done]
    for who in ("port", "original"):
        curves[who] = {k: v[:done] for k, v in curves[who].items()}
    port, original = np.asarray(curves["port"]["post_loss"]), np.asarray(curves["original"]["post_loss"])
    rel = np.abs(port - original) / np.maximum(np.abs(original), 1e-30)
    differ = np.flatnonzero(port != original)
    parted = np.flatnonzero(~(rel <= part_tolerance))  # NaN counts as parted.
    curves["relative_difference"] = rel.tolist()
    curves["identical_until"] = int(differ[0]) if len(differ) else done  # First iteration that differs.
    curves["parted_at"] = int(parted[0]) if len(parted) else None
    curves["part_tolerance"] = part_tolerance
    window = max(1, done // 20)
    curves["final_mean"] = {who: {k: float(np.mean(curves[who][k][-window:])) for k in keys}
                            for who in ("port", "original")}
    curves["final_window"] = window
    result.curves = curves
    return algo


def plot_curves(curves: Dict, config, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    metric = "post_accuracy" if config.classification else "post_loss"
    label = "accuracy" if config.classification else "loss"
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    window = max(1, len(curves["iteration"]) // 50)
    smooth = lambda v: np.convolve(v, np.ones(window) / window, mode="valid")
    its = np.asarray(curves["iteration"])[window - 1:]
    for who, style in (("original", "-"), ("port", "--")):
        axes[0].plot(its, smooth(curves[who][metric]), style, label=f"{who}")
        axes[1].plot(curves["val_iteration"], curves["val_" + who][metric], style + "o", label=who, markersize=3)
    axes[0].set_title(f"training {label} after {config.num_updates} step(s) (mean of {window})")
    axes[1].set_title(f"validation {label} after {config.num_updates} step(s)")
    rel = np.asarray(curves["relative_difference"])
    axes[2].semilogy(curves["iteration"], np.maximum(rel, 1e-12), ".", markersize=2)
    axes[2].axhline(curves["part_tolerance"], color="grey", lw=0.8)
    if curves["parted_at"] is not None:
        axes[2].axvline(curves["parted_at"], color="red", lw=0.8, label=f"parted at {curves['parted_at']}")
        axes[2].legend()
    axes[2].set_title("|port - original| / |original|, training loss (1e-12: equal)")
    for ax in axes:
        ax.set_xlabel("iteration")
    axes[0].legend()
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------- 3. cross-evaluation
def test_tasks(test_config):
    """The port's test tasks (`train.test`'s: its split, seed, meta-batch 1)."""
    from maml_tf.data import TEST_SEED, make_tasks

    split = "test" if test_config.test_set else "val"
    return list(make_tasks(test_config, split, TEST_SEED).batches(1, test_config.num_test_tasks))


def cross_evaluate(test_config, worker, tasks, weights: Dict, name: str, result: Comparison) -> None:
    """One checkpoint's per-task results in both programs, on the same tasks."""
    algo = port_algorithm(test_config, "float32", weights)
    steps = test_config.num_steps_reported
    classification = test_config.classification
    worker.call("assign", values=weights)
    worker.submit("test", tasks=stack_tasks(tasks))  # Runs while the port evaluates.
    rows = []
    for batch in tasks:
        r = algo.evaluate(batch, steps)
        first, after = ("total_accuracy1", "total_accuracies2") if classification else ("total_loss1", "total_losses2")
        rows.append(np.concatenate([[float(r[first])], np.asarray(r[after], np.float64)]))
    port = np.asarray(rows)
    original = worker.result()
    n = len(port)
    ci = lambda v: 1.96 * v.std(0) / np.sqrt(n)
    diff = np.abs(port - original)
    entry = {
        "tasks": n, "steps": steps, "measure": "accuracy" if classification else "MSE",
        "port_mean": port.mean(0).tolist(), "port_ci95": ci(port).tolist(),
        "original_mean": original.mean(0).tolist(), "original_ci95": ci(original).tolist(),
        "max_abs_difference": diff.max(0).tolist(),
        "tasks_differing": int(np.sum(np.any(port != original, axis=1))),
        "entries_identical": int(np.sum(port == original)), "entries": int(port.size),
    }
    gap = np.abs(port.mean(0) - original.mean(0))
    allowed = MEAN_TOLERANCE * np.maximum(ci(original), 1e-12)
    entry["mean_gap_over_ci95"] = (gap / np.maximum(ci(original), 1e-30)).tolist()
    if np.any(~(gap <= allowed)):
        result.fail(f"cross_eval {name}: the means differ by up to {gap.max():.4g}, more than "
                    f"{MEAN_TOLERANCE} of the original's 95% interval")
    result.cross_eval[name] = entry


# ----------------------------------------------------------------------------------------------- Omniglot split
def compare_split(config, worker, result: Comparison) -> None:
    """The original `DataGenerator`'s split (sorted listing) against the port's, by character name."""
    from pathlib import Path

    from maml_tf.data.omniglot import FOLDER_NAME, load_omniglot, split_indices

    characters = load_omniglot(config)
    names = list(characters.names)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(config.data_dir) / FOLDER_NAME if config.omniglot_source == "folder" else Path(tmp)
        if config.omniglot_source != "folder":  # The TFDS source: the same alphabet/character tree, empty.
            for n in names:
                (folder / n).mkdir(parents=True)
        theirs = worker.call("split", flags=original_flags(config), data_folder=str(folder))
        unsorted = worker.call("split", flags=original_flags(config), data_folder=str(folder), sorted_listing=False)
    out = {}
    for split in ("train", "val", "test"):
        mine = [names[i] for i in split_indices(len(names), split)]
        out[split] = {"characters": len(mine), "same_characters": len(set(mine) & set(theirs[split])),
                      "same_order": mine == theirs[split],
                      "same_characters_unsorted_listing": len(set(mine) & set(unsorted[split]))}
        if not out[split]["same_order"]:
            result.fail(f"split: the original's {split} characters differ from the port's "
                        f"({out[split]['same_characters']} of {len(mine)} shared)")
    result.split = out


# ----------------------------------------------------------------------------------------------- the report
def write_report(result: Comparison, config, out: str) -> str:
    lines = [f"# This port against the original code: {config.exp_string()}", "",
             f"Parity: **{'passed' if result.passed else 'FAILED'}**" +
             ("" if result.passed else "; " + "; ".join(result.failures)), "",
             "Flags: `" + " ".join(f"--{k}={v}" for k, v in original_flags(config).items()) + "`", ""]
    if result.split:
        lines += ["## Omniglot split", "",
                  "The original's `DataGenerator` with the stand-in's sorted `os.listdir`, and (last column) with "
                  "this file system's own listing order, as the original runs by itself.", "",
                  "| split | characters | shared with the port's | same order | shared, unsorted listing |",
                  "|---|---|---|---|---|"]
        lines += [f"| {s} | {v['characters']} | {v['same_characters']} | {v['same_order']} | "
                  f"{v['same_characters_unsorted_listing']} |" for s, v in result.split.items()]
        lines.append("")
    g = result.gradients
    if g:
        lines += ["## 1. One batch: outputs, losses and meta-gradient", "",
                  f"Relative error per tensor, max |a - b| / max |original| ({g['steps']} inner steps built, as "
                  "the original main() builds them). The original computes in float32; `rounding` is the float32 "
                  "port against the float64 one: what float32 rounding does in this configuration. Allowed for "
                  f"the float64 port: {ROUNDING_FACTOR:g} x rounding, at least {TOLERANCES['outputs']:g} for "
                  f"outputs and losses, {TOLERANCES['meta_gradient']:g} for the meta-gradient.", "",
                  "| tensor | original vs float64 port | original vs float32 port | rounding | allowed | |",
                  "|---|---|---|---|---|---|"]
        for key, r in g["tensors"].items():
            lines.append(f"| {key} | {_fmt(r['float64'])} | {_fmt(r['float32'])} | {_fmt(r['rounding'])} | "
                         f"{_fmt(r['allowed'])} | {'ok' if r['passed'] else 'FAIL'} |")
        if config.norm == "batch_norm":
            lines += ["", "Biases followed by a batch norm are left out: their meta-gradient is 0 in exact "
                      "arithmetic, and both programs' values are float noise."]
        lines.append("")
    c = result.curves
    if c:
        n = len(c["iteration"])
        lines += ["## 2. Learning curves", "",
                  ("Interrupted (Ctrl-C): the iterations both programs finished are reported, and no checkpoint or "
                   "cross-evaluation of the final weights was made. " if c["interrupted"] else "") +
                  f"{n} iterations each from the same weights on the same tasks (`curves.png`). The training "
                  f"loss after {config.num_updates} step(s) is bit-identical in both programs for the first "
                  f"{c['identical_until']} iterations" + (" (all)" if c["identical_until"] >= n else "") + "; " +
                  (f"they part (relative difference > {c['part_tolerance']:g}) at iteration {c['parted_at']}."
                   if c["parted_at"] is not None else f"it stays within {c['part_tolerance']:g} throughout."), "",
                  f"Mean of the last {c['final_window']} iterations:", "",
                  "| program | " + " | ".join(c["final_mean"]["port"]) + " |",
                  "|---|" + "---|" * len(c["final_mean"]["port"])]
        for who in ("original", "port"):
            lines.append(f"| {who} | " + " | ".join(f"{v:.4f}" for v in c["final_mean"][who].values()) + " |")
        lines.append("")
    if result.cross_eval:
        lines += ["## 3. Cross-evaluation", "",
                  "Each checkpoint evaluated by both programs on the same test tasks (the port's `--train=False` "
                  "tasks); mean and 95% interval after each inner step.", ""]
        for name, e in result.cross_eval.items():
            lines += [f"### {name}", "",
                      f"{e['tasks']} tasks; {e['measure']}; {e['tasks_differing']} tasks differ at all; "
                      f"{e['entries_identical']} of {e['entries']} entries identical.", "",
                      "| step | original | port | max per-task difference |", "|---|---|---|---|"]
            for j in range(e["steps"] + 1):
                lines.append(f"| {j} | {e['original_mean'][j]:.5g} +- {e['original_ci95'][j]:.3g} | "
                             f"{e['port_mean'][j]:.5g} +- {e['port_ci95'][j]:.3g} | "
                             f"{e['max_abs_difference'][j]:.2g} |")
            lines.append("")
    lines += [f"Seconds: {result.seconds}", ""]
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(dataclasses.asdict(result), f, indent=1)
    return path


# ----------------------------------------------------------------------------------------------- the command
def check_config(config, parts, iterations: int) -> None:
    """What the original can run: a `ConfigError` (one line) otherwise."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ConfigError(f"--parts: {', '.join(unknown) or 'none given'}; choose from {', '.join(PARTS)}.")
    if not config.options.original:
        raise ConfigError(f"--algorithm={config.algorithm}: the original code runs MAML only.")
    if config.datasource not in ("sinusoid", "omniglot", "miniimagenet"):
        raise ConfigError(f"--datasource={config.datasource}: the original has sinusoid, omniglot and "
                          "miniimagenet only.")
    port_only = {"clip_norm": config.clip_norm, "mixed_precision": config.mixed_precision,
                 "recompute_inner_steps": config.recompute_inner_steps}
    set_flags = [f"--{k}" for k, v in port_only.items() if v]
    if set_flags:
        raise ConfigError(f"{', '.join(set_flags)}: not in the original code.")
    if "curves" in parts and iterations < 1:
        raise ConfigError(f"--iterations must be at least 1; got {iterations}.")


def run(config, original_dir: str, out: str, parts=PARTS, iterations: int = 1000, val_interval: int = 0,
        part_tolerance: float = 1e-3, checkpoint: Optional[str] = None, init_seed: int = 0,
        worker=None) -> Comparison:
    """The comparison (see the module docstring); writes the report to `out` and returns it.

    `worker`: a running `maml_tf.original.Worker` to use (default: a new one for this call).
    """
    import keras

    from maml_tf import train
    from maml_tf.data import make_tasks
    from maml_tf.original import Worker
    from maml_tf.tf1_checkpoint import export_tf1_checkpoint, read_tf1_weights

    os.makedirs(out, exist_ok=True)
    train.configure_threads(config)
    result = Comparison(config=config.flat())
    test_config = dataclasses.replace(config, train=False)
    keras.utils.set_random_seed(config.seed)
    train_batch = next(make_tasks(config, "train", config.seed).batches(config.meta_batch_size))
    tasks = test_tasks(test_config) if "cross_eval" in parts else None
    checkpoint_weights = None
    if checkpoint:
        checkpoint_weights = read_tf1_weights(checkpoint)
    own = worker is None
    worker = worker or Worker(original_dir, os.path.join(out, "original.log"))
    try:
        start = time.time()
        test_shapes = (tasks[0].support_x.shape[1], tasks[0].query_x.shape[1]) if tasks else None
        init = worker.call("build", flags=original_flags(config),
                           train_shapes=(train_batch.support_x.shape[1], train_batch.query_x.shape[1]),
                           train_steps=config.test_num_updates, test_shapes=test_shapes,
                           test_steps=test_config.test_num_updates, seed=init_seed)
        result.seconds["build"] = round(time.time() - start, 1)
        if config.datasource == "omniglot":
            compare_split(config, worker, result)
        if "gradients" in parts:
            start = time.time()
            compare_gradients(config, worker, init, train_batch, result)
            result.seconds["gradients"] = round(time.time() - start, 1)
            summary = result.gradients["summary"]
            print(f"gradients: largest relative error of the original against the float64 port "
                  f"{_fmt(summary['outputs_float64'])} (outputs, losses), {_fmt(summary['meta_gradient_float64'])} "
                  f"(meta-gradient); against the float32 port {_fmt(summary['outputs_float32'])}, "
                  f"{_fmt(summary['meta_gradient_float32'])}; float32 rounding "
                  f"{_fmt(summary['outputs_rounding'])}, {_fmt(summary['meta_gradient_rounding'])}", flush=True)
        trained = {}
        if "curves" in parts:
            val_interval = val_interval or 5 * config.datasource_spec.print_interval
            algo = learning_curves(config, worker, init, iterations, val_interval, part_tolerance, result)
            if result.curves["interrupted"]:  # The programs' weights may be a step apart: no checkpoints.
                parts = [p for p in parts if p != "cross_eval"]
            else:
                trained["original"] = worker.call("weights")
                trained["port"] = port_weights(algo)
                os.makedirs(os.path.join(out, "port"), exist_ok=True)
                os.makedirs(os.path.join(out, "original"), exist_ok=True)
                worker.call("save", prefix=os.path.abspath(os.path.join(out, "original", f"model{iterations}")))
                export_tf1_checkpoint(algo.model, os.path.join(out, "port", f"model{iterations}"))
            figure = plot_curves(result.curves, config, os.path.join(out, "curves.png"))
            print(f"curves: bit-identical for the first {result.curves['identical_until']} iterations, parted at "
                  f"{result.curves['parted_at']}; wrote {figure}", flush=True)
        if "cross_eval" in parts:
            start = time.time()
            chosen = {f"checkpoint {checkpoint}": checkpoint_weights} if checkpoint_weights else {}
            chosen.update({f"{who}'s weights after {iterations} iterations": w for who, w in trained.items()})
            if not chosen:
                chosen["the initial weights"] = init
            for name, weights in chosen.items():
                cross_evaluate(test_config, worker, tasks, weights, name, result)
                e = result.cross_eval[name]
                print(f"cross_eval {name}: original {e['original_mean'][-1]:.5g}, port {e['port_mean'][-1]:.5g} "
                      f"after {e['steps']} steps; {e['tasks_differing']} of {e['tasks']} tasks differ", flush=True)
            result.seconds["cross_eval"] = round(time.time() - start, 1)
    finally:
        if own:
            worker.close()
    path = write_report(result, config, out)
    print(f"Parity {'passed' if result.passed else 'FAILED: ' + '; '.join(result.failures)}. Wrote {path} and "
          f"report.json", flush=True)
    if result.curves and result.curves["interrupted"]:
        raise KeyboardInterrupt  # After the report: exit status 130.
    return result


def define_flags() -> None:
    """The original's flags (`Config`'s) and the command's own; defined when the command runs, not on import."""
    cli.define_config_flags()
    flags.DEFINE_string("original_dir", None, "a checkout of github.com/cbfinn/maml (maml.py, utils.py, "
                        "data_generator.py).")
    flags.DEFINE_string("out", None, "output folder (default: <logdir>/compare/<the run's folder name>).")
    flags.DEFINE_list("parts", list(PARTS), f"what to run, of {', '.join(PARTS)}.")
    flags.DEFINE_integer("iterations", 1000, "curves: meta-iterations each program trains.")
    flags.DEFINE_integer("val_interval", 0, "curves: iterations between validation batches (0: the original's, 500 "
                         "for images, 1000 for the sinusoid).")
    flags.DEFINE_float("part_tolerance", 1e-3, "curves: relative difference of the training loss at which the two "
                       "programs count as parted.")
    flags.DEFINE_string("checkpoint", None, "cross_eval: a TF1 checkpoint prefix to evaluate with both (the original's "
                        "logs/.../model<itr>, or this port's --export_checkpoint).")
    flags.DEFINE_integer("init_seed", 0, "graph-level seed of the original's initialisers (the weights both start "
                         "from).")


def main(argv):
    try:
        if len(argv) > 1:
            raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
        if not FLAGS.original_dir:
            raise ConfigError("--original_dir is required: a checkout of https://github.com/cbfinn/maml.")
        config = cli.config_from_flags().validate()
        check_config(config, FLAGS.parts, FLAGS.iterations)
        from maml_tf.original import ORIGINAL_FILES, OriginalError, check_original_dir

        try:
            check_original_dir(FLAGS.original_dir, ORIGINAL_FILES)
        except OriginalError as e:
            raise ConfigError(str(e)) from None
    except ConfigError as e:
        cli.usage_error(str(e), PROGRAM)
    if not config.tf_log:
        cli.quiet_tensorflow()
    from maml_tf.data.errors import DataError
    from maml_tf.original import OriginalError

    out = FLAGS.out or os.path.join(config.logdir, "compare", config.exp_string())
    try:
        result = run(config, FLAGS.original_dir, out, FLAGS.parts, FLAGS.iterations, FLAGS.val_interval,
                     FLAGS.part_tolerance, FLAGS.checkpoint, FLAGS.init_seed)
    except (DataError, FileNotFoundError, OriginalError, ValueError) as e:
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(0 if result.passed else 1)


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=lambda argv: cli.parse_flags(argv, PROGRAM))
