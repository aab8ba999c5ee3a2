"""Runs every benchmark case in its own process and writes JSON and a Markdown table.

    python benchmarks/run_suite.py                      # the speed table (issue 8 cases, every algorithm)
    python benchmarks/run_suite.py --suite=imaml_memory # iMAML vs MAML vs first-order MAML, 5-50 inner steps
    python benchmarks/run_suite.py --only=omniglot5_maml,omniglot5_fomaml --iterations=10
    python benchmarks/run_suite.py --repeats=3          # on a noisy machine: median of 3 runs per case
    python benchmarks/run_suite.py --original_dir=/tmp/cbfinn-maml  # time the original code too, side by side
    python benchmarks/run_suite.py --baseline_dir=../baseline --repeats=2  # an older commit's checkout, side by side

Each case runs `bench_meta_iteration.py` in a fresh Python process, so the
peak resident memory is that case's alone. Results go to
`benchmarks/results/<suite>-<device>.{json,md}`; the Markdown table is the one
the README shows. The original code's figures from issue 8 (2 CPU cores, TF
2.21, oneDNN) are given for the cases that exist there. With `--original_dir`
(a checkout of github.com/cbfinn/maml) the original code's step is also timed
in this run (`bench_original.py`, round-robin with the port's cases), in each
of `ORIGINAL_SETTINGS` (the original main.py's `InteractiveSession` with one
thread per op and with TensorFlow's default threading, and a plain `Session`
with one thread per op), and the table gives the speed-up against the fastest
of them as well: the machine's
speed drifts by about 20% within an hour, so only a ratio measured side by
side is firm.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import time

from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))

MAMLPP = ["algorithm=maml++", "num_updates=5"]

# name: (preset, overrides, original (s, GB) or None)
SPEED = {
    "sinusoid_maml": ("sinusoid", [], (0.0039, 0.59)),
    "omniglot5_maml": ("omniglot5", [], (0.214, 1.1)),
    "omniglot5_fomaml": ("omniglot5", ["stop_grad=True"], (0.087, 1.0)),
    "omniglot20_maml": ("omniglot20", [], (0.79, 2.0)),
    "miniimagenet_maml": ("miniimagenet", [], (1.26, 3.3)),
    # What each speed option gives: tasks one by one (tf.map_fn, as the original), every core per op,
    # 20-way tasks batched (by default they run one by one: 20 support examples).
    "omniglot5_maml_map_fn": ("omniglot5", ["batch_tasks=False"], (0.214, 1.1)),
    "omniglot5_maml_all_threads": ("omniglot5", ["intra_op_threads=0"], (0.214, 1.1)),
    "omniglot20_maml_batched": ("omniglot20", ["batched_conv_max_support=0"], (0.79, 2.0)),
    "miniimagenet_maml_map_fn": ("miniimagenet", ["batch_tasks=False"], (1.26, 3.3)),
    # XLA (one task group): the small sinusoid graph gains, conv nets lose on a CPU.
    "sinusoid_maml_xla": ("sinusoid", ["jit_compile=True"], (0.0039, 0.59)),
    # float16 (meant for GPUs; on a CPU the conv net runs per task, in slow float16 kernels).
    "omniglot5_maml_mixed": ("omniglot5", ["mixed_precision=True"], (0.214, 1.1)),
    # The authors' Omniglot 5-way 1-shot settings of each algorithm.
    "omniglot5_reptile": ("omniglot5", ["algorithm=reptile", "meta_batch_size=5", "reptile_train_shots=10",
                                        "reptile_inner_batch=10", "reptile_inner_iters=5"], None),
    "omniglot5_imaml_gd": ("omniglot5", ["algorithm=imaml", "imaml_lam=2", "imaml_n_steps=16",
                                         "imaml_inner_lr=0.1"], None),
    "omniglot5_imaml_hf": ("omniglot5", ["algorithm=imaml", "imaml_solver=hessian_free", "imaml_lam=2",
                                         "imaml_n_steps=4"], None),
    # MAML++ with the authors' configs (5 steps, meta-batch 8 on Omniglot, 2 on MiniImagenet; the first epochs,
    # with the multi-step loss), after its epochs (the last step's loss only), and MAML at the same shape.
    "omniglot5_mamlpp": ("omniglot5", MAMLPP + ["meta_batch_size=8"], None),
    "omniglot5_mamlpp_last_step": ("omniglot5", MAMLPP + ["meta_batch_size=8", "mamlpp_msl=False"], None),
    "omniglot5_maml_b8_5steps": ("omniglot5", ["meta_batch_size=8", "num_updates=5", "update_lr=0.1"], None),
    "omniglot5_mamlpp_all_off": ("omniglot5", MAMLPP + ["meta_batch_size=8", "mamlpp_msl=False", "mamlpp_lslr=False",
                                                        "mamlpp_bnrs=False", "mamlpp_bnwb=False", "mamlpp_ca=False"],
                                 None),
    "omniglot20_mamlpp": ("omniglot20", MAMLPP + ["meta_batch_size=8"], None),
    "miniimagenet_mamlpp": ("miniimagenet", MAMLPP + ["meta_batch_size=2", "mamlpp_min_learning_rate=0.001"], None),
    # BMAML's sinusoid config (10 particles, 1 chaser and 1 leader step, meta-batch 10), EMAML and PLATIPUS alike,
    # and MAML at that meta-batch.
    "sinusoid_bmaml": ("sinusoid", ["algorithm=bmaml", "meta_batch_size=10", "norm=None"], None),
    "sinusoid_emaml": ("sinusoid", ["algorithm=emaml", "meta_batch_size=10", "norm=None"], None),
    "sinusoid_platipus": ("sinusoid", ["algorithm=platipus", "meta_batch_size=10", "norm=None"], None),
    "sinusoid_maml_b10": ("sinusoid", ["meta_batch_size=10", "norm=None"], None),
    # LLAMA (K-FAC curvature of every task's adapted weights, its log-determinant's meta-gradient) beside MAML at the
    # same shapes: the BMAML sinusoid config above and the Omniglot README command.
    "sinusoid_llama": ("sinusoid", ["algorithm=llama", "meta_batch_size=10", "norm=None"], None),
    "omniglot5_llama": ("omniglot5", ["algorithm=llama"], None),
    # MMAML (an encoder and FiLM per task, tasks one at a time) beside MAML at the same shapes: the authors'
    # 5-mode regression (LSTM encoder; XLA-compiled or not) and the Omniglot README command (conv encoder).
    "multimodal5_maml": ("multimodal5", [], None),
    "multimodal5_mmaml": ("multimodal5", ["algorithm=mmaml"], None),
    "multimodal5_mmaml_xla": ("multimodal5", ["algorithm=mmaml", "jit_compile=True"], None),
    "omniglot5_mmaml": ("omniglot5", ["algorithm=mmaml"], None),
}

# iMAML paper, Figure 2: Omniglot 20-way 5-shot, one task per meta-batch, growing inner steps.
IMAML_MEMORY = {}
for _steps in (5, 10, 20, 50):
    _shape = ["num_classes=20", "update_batch_size=5", "meta_batch_size=1", "update_lr=0.1"]
    IMAML_MEMORY[f"maml_{_steps}"] = ("omniglot5", _shape + [f"num_updates={_steps}"], None)
    IMAML_MEMORY[f"fomaml_{_steps}"] = ("omniglot5", _shape + [f"num_updates={_steps}", "stop_grad=True"], None)
    IMAML_MEMORY[f"imaml_{_steps}"] = ("omniglot5", _shape + ["algorithm=imaml", f"imaml_n_steps={_steps}",
                                                              "imaml_lam=2", "imaml_inner_lr=0.1"], None)

SUITES = {"speed": SPEED, "imaml_memory": IMAML_MEMORY}
SINUSOID_ITERATIONS = 1000
# bench_original.py settings: one thread per op (as the port) or TensorFlow's default, in the original main.py's
# InteractiveSession (no graph optimisation); one thread per op in a plain Session (with Grappler's).
ORIGINAL_SETTINGS = (("--intra_op_threads=1",), ("--intra_op_threads=0",), ("--intra_op_threads=1", "--session=plain"))

flags.DEFINE_enum("suite", "speed", list(SUITES), "which table.")
flags.DEFINE_list("only", [], "run only these cases.")
flags.DEFINE_integer("iterations", 30, "timed iterations per case (median reported; sinusoid cases at least "
                     f"{SINUSOID_ITERATIONS}).")
flags.DEFINE_integer("warmup", 3, "untimed iterations per case.")
flags.DEFINE_integer("repeats", 1, "runs of each case, round-robin; the table gives the median of their medians, "
                     "the min and max over all their iterations and the largest peak memory.")
flags.DEFINE_string("original_dir", None, "a checkout of github.com/cbfinn/maml: time the original code too.")
flags.DEFINE_string("baseline_dir", None, "a checkout of another commit of this project (git worktree add): time "
                    "its bench_meta_iteration.py on every case too, round-robin, and add a comparison table.")
flags.DEFINE_string("out", os.path.join(HERE, "results"), "output folder.")
FLAGS = flags.FLAGS


def original_of(case):
    """The original code's counterpart of a case (`(preset, overrides)`), or None."""
    preset, overrides, figures = case
    return (preset, tuple(o for o in overrides if o == "stop_grad=True")) if figures else None


def run_case(preset, overrides, script="bench_meta_iteration.py", extra=(), cwd=None):
    # Millisecond sinusoid steps vary by 2x between runs of 30 iterations: time more of them.
    iterations = max(FLAGS.iterations, SINUSOID_ITERATIONS) if preset == "sinusoid" else FLAGS.iterations
    cmd = [sys.executable, os.path.join(HERE, script), f"--preset={preset}",
           f"--iterations={iterations}", f"--warmup={FLAGS.warmup}", *extra]
    if overrides:
        cmd.append("--set=" + ",".join(overrides))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}, cmd
    return json.loads(proc.stdout.strip().splitlines()[-1]), cmd


def _commit(checkout: str) -> str:
    """The short commit of a checkout (the table names it, not a path of this machine)."""
    proc = subprocess.run(["git", "-C", checkout, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or os.path.basename(os.path.abspath(checkout))


def combine(runs):
    """One report from repeated runs of a case: the median of their medians, the extremes, the largest peak."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1]
    report = dict(ok[0])
    report.update(median_s=statistics.median(r["median_s"] for r in ok),
                  run_medians_s=[r["median_s"] for r in ok], min_s=min(r["min_s"] for r in ok),
                  max_s=max(r["max_s"] for r in ok), peak_rss_gb=max(r["peak_rss_gb"] for r in ok))
    return report


def main(_):
    cases = SUITES[FLAGS.suite]
    names = FLAGS.only or list(cases)
    jobs = [(name, *cases[name][:2], "bench_meta_iteration.py", ()) for name in names]
    if FLAGS.original_dir:  # The original in each of ORIGINAL_SETTINGS.
        originals = dict.fromkeys(filter(None, (original_of(cases[name]) for name in names)))
        jobs += [((*original, setting), *original, "bench_original.py", (f"--original_dir={FLAGS.original_dir}",
                                                                         *setting))
                 for original in originals for setting in ORIGINAL_SETTINGS]
    if FLAGS.baseline_dir:
        baseline = os.path.abspath(FLAGS.baseline_dir)
        jobs += [(("baseline", name), *cases[name][:2], os.path.join(baseline, "benchmarks", "bench_meta_iteration.py"),
                  ()) for name in names]
    runs = {job[0]: [] for job in jobs}
    commands = {}
    for repeat in range(FLAGS.repeats):  # Round-robin, so that a slow spell of the machine hits every case.
        for key, preset, overrides, script, extra in jobs:
            start = time.time()
            cwd = os.path.dirname(os.path.dirname(script)) if os.path.isabs(script) else None
            report, commands[key] = run_case(preset, list(overrides), script, extra, cwd)
            runs[key].append(report)
            label = key if isinstance(key, str) else " ".join(key) if key[0] == "baseline" else \
                f"original {preset} {' '.join(overrides)} {' '.join(extra[1:])}"
            print(f"{label} (run {repeat + 1}): {report.get('median_s', report.get('error'))} s, "
                  f"{report.get('peak_rss_gb')} GB ({time.time() - start:.0f} s)", flush=True)
    command = lambda key: " ".join(["python", os.path.relpath(commands[key][1], os.path.dirname(HERE))]
                                   + commands[key][2:])
    results = []
    for name in names:
        report = combine(runs[name])
        report.update(case=name, command=command(name))
        if cases[name][2]:
            report["original_s"], report["original_gb"] = cases[name][2]
        original = original_of(cases[name])
        if FLAGS.original_dir and original:
            # The original's fastest setting, so that the speed-up is not flattered by a slow one.
            measured = [{**combine(runs[(*original, setting)]), "command": command((*original, setting))}
                        for setting in ORIGINAL_SETTINGS]
            ok = [m for m in measured if "error" not in m]
            report["original_this_run"] = min(ok, key=lambda m: m["median_s"]) if ok else measured[0]
            report["original_all_settings"] = measured
        results.append(report)
    device = results[0].get("device", "CPU") if results else "CPU"
    os.makedirs(FLAGS.out, exist_ok=True)
    stem = os.path.join(FLAGS.out, f"{FLAGS.suite}-{device.lower()}")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {device}"
    with open(stem + ".json", "w") as f:
        json.dump({"machine": machine, "date": time.strftime("%Y-%m-%d"), "results": results}, f, indent=1)
    lines = [f"Machine: {machine}; {time.strftime('%Y-%m-%d')}; median of {FLAGS.iterations} iterations "
             f"(sinusoid: {max(FLAGS.iterations, SINUSOID_ITERATIONS)}) after {FLAGS.warmup} warm-up"
             + (f"; median over {FLAGS.repeats} runs of each case." if FLAGS.repeats > 1 else "."), "",
             "| case | s / iteration (median) | min | max | peak RSS GB | original s (issue 8) | original GB "
             "| speed-up | original s, this run | original GB, this run | speed-up, this run |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['case']} | error: {r['error']} |" + " |" * 9)
            continue
        orig = (r.get("original_s"), r.get("original_gb"))
        ratio = f"{orig[0] / r['median_s']:.2f}x" if orig[0] else ""
        same = r.get("original_this_run", {})
        if "error" in same:
            same_cells = f"error: {same['error']} | | "
        elif same:
            same_cells = (f"{same['median_s']:.4g} ({same['intra_op_threads'] or 'default'} thread/op, "
                          f"{same.get('session', 'interactive')} session) | "
                          f"{same['peak_rss_gb']:.2f} | "
                          f"{same['median_s'] / r['median_s']:.2f}x")
        else:
            same_cells = " | | "
        lines.append(f"| {r['case']} | {r['median_s']:.4g} | {r['min_s']:.4g} | {r['max_s']:.4g} | "
                     f"{r['peak_rss_gb']:.2f} | {orig[0] or ''} | {orig[1] or ''} | {ratio} | {same_cells} |")
    if FLAGS.baseline_dir:
        lines += ["", f"Side by side with commit {_commit(FLAGS.baseline_dir)}, same run, round-robin:", "",
                  "| case | this commit s | baseline s | ratio (this / baseline) | this commit GB | baseline GB |",
                  "|---|---|---|---|---|---|"]
        for r in results:
            b = combine(runs[("baseline", r["case"])])
            if "error" in r or "error" in b:
                lines.append(f"| {r['case']} | {r.get('error', '')} | {b.get('error', '')} | | | |")
                continue
            lines.append(f"| {r['case']} | {r['median_s']:.4g} | {b['median_s']:.4g} | "
                         f"{r['median_s'] / b['median_s']:.2f} | {r['peak_rss_gb']:.2f} | {b['peak_rss_gb']:.2f} |")
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"Wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    app.run(main)
