"""Runs a user can trust: exact resume after any interruption, safe checkpoints and folders, one-line errors."""

import dataclasses
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from maml_tf import train
from maml_tf.training.progress import Progress
from maml_tf.config import Config, ConfigError
from maml_tf.data.errors import DataError
from tests.conftest import ROOT

SINE = ["--norm=None", "--update_batch_size=5", "--meta_batch_size=5", "--metatrain_iterations=2200",
        "--progress=False"]
NOISE = ("absl::InitializeLog", "oneDNN", "cuda", "cuInit", "Sharding callback", "I0000", "W0000", "E0000",
         "WARNING:tensorflow")


def final_state(directory):
    """Every value of the latest checkpoint (weights, Adam slots, iteration) but the save counter."""
    import tensorflow as tf

    path = tf.train.latest_checkpoint(str(directory))
    reader = tf.train.load_checkpoint(path)
    return path, {n: reader.get_tensor(n) for n, _ in tf.train.list_variables(path) if "save_counter" not in n}


def main_cmd(logdir, *flags):
    return [sys.executable, str(ROOT / "main.py"), f"--logdir={logdir}", *SINE, *flags]


def test_killed_and_interrupted_runs_resume_bit_identical(tmp_path):
    reference = subprocess.run(main_cmd(tmp_path / "ref"), capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr
    assert not [line for line in (reference.stdout + reference.stderr).splitlines() if any(n in line for n in NOISE)]
    path, want = final_state(next((tmp_path / "ref").iterdir()))
    assert path.endswith("model-2199")
    rng = np.random.default_rng(19)
    for sig in (signal.SIGKILL, signal.SIGINT, signal.SIGKILL):
        logdir = tmp_path / f"run{sig}_{rng.integers(1 << 30)}"
        proc = subprocess.Popen(main_cmd(logdir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().startswith("Training")  # TensorFlow is up; the loop starts.
        time.sleep(rng.uniform(0.5, 6.0))  # A random moment of the run.
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=600)
        if sig == signal.SIGINT and proc.returncode != 0:  # (Unless the run had finished already.)
            assert proc.returncode == 130 and "Interrupted after iteration" in out, err
        resumed = subprocess.run(main_cmd(logdir), capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stderr
        _, got = final_state(next(logdir.iterdir()))
        assert got.keys() == want.keys()
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{name} after {sig!r}")


def tiny(tmp_path, **kw):
    kw = {"logdir": str(tmp_path), "norm": "None", "update_batch_size": 3, "meta_batch_size": 2, "progress": False,
          "metatrain_iterations": 3, "num_test_tasks": 2, **kw}
    return Config(**kw).validate()


def test_resume_with_changed_flags_stops_with_one_line(tmp_path):
    config = tiny(tmp_path)
    train.run(config)
    with pytest.raises(train.TrainingError, match=r"--meta_lr=0.002 \(the checkpoint's run: 0.001\)"):
        train.run(dataclasses.replace(config, meta_lr=0.002, metatrain_iterations=5))
    train.run(dataclasses.replace(config, metatrain_iterations=5, batch_tasks=False))  # Allowed changes.
    train.run(dataclasses.replace(config, meta_lr=0.002, metatrain_iterations=5, resume=False))  # Afresh.


def test_damaged_checkpoints_fall_back_to_the_newest_intact_one(tmp_path, capsys):
    config = tiny(tmp_path, metatrain_iterations=1002)
    train.run(config)
    exp = tmp_path / config.exp_string()
    data = exp / "model-1001.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:20])  # Truncated, as by a kill while saving.
    train.run(dataclasses.replace(config, metatrain_iterations=1003))
    captured = capsys.readouterr()
    assert "model-1001 is damaged" in captured.err and "from iteration 1001 to 1003" in captured.out
    (exp / "model-1002.index").unlink()
    result = train.run(dataclasses.replace(config, train=False))
    assert result["values"].shape == (2, 11)
    with pytest.raises(train.TrainingError, match="damaged"):
        data = exp / "model-1000.data-00000-of-00001"
        data.write_bytes(b"")
        train.run(dataclasses.replace(config, train=False, test_iter=1000))


def test_a_second_training_in_the_same_folder_stops_and_a_dead_ones_lock_is_taken_over(tmp_path):
    config = tiny(tmp_path)
    exp = tmp_path / config.exp_string()
    exp.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (exp / ".lock").write_text(f"{socket.gethostname()} {sleeper.pid}")
        with pytest.raises(train.TrainingError, match=f"process {sleeper.pid}"):
            train.run(config)
    finally:
        sleeper.kill()
        sleeper.wait()
    train.run(config)  # The lock's process is gone: taken over, and removed at the end.
    assert not (exp / ".lock").exists()


@pytest.mark.parametrize("flag", ["update_lr", "meta_lr"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_step_sizes_are_rejected(tmp_path, flag, value):
    with pytest.raises(ConfigError, match=flag):
        Config(logdir=str(tmp_path), **{flag: value}).validate()
    assert not list(tmp_path.iterdir())


def test_bad_test_iter_is_rejected():
    with pytest.raises(ConfigError, match="test_iter"):
        Config(test_iter=-7).validate()


@pytest.mark.parametrize("argv", [["--meta_batch_size=abc"], ["--no_such_flag=1"], ["--update_lr=nan"],
                                  ["stray"]])
def test_usage_errors_are_one_line_without_tensorflow(argv):
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), *argv], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "see --help" in proc.stderr, proc.stderr


def test_export_checkpoint_creates_its_folder_and_an_unwritable_one_fails_first(tmp_path):
    config = tiny(tmp_path)
    train.run(dataclasses.replace(config, export_checkpoint=str(tmp_path / "new" / "deeper" / "model")))
    assert (tmp_path / "new" / "deeper" / "model.index").exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(train.TrainingError, match="--export_checkpoint"):
        train.run(dataclasses.replace(config, logdir=str(tmp_path / "other"),
                                      export_checkpoint=str(blocker / "model")))
    assert not (tmp_path / "other").exists() or not list((tmp_path / "other").rglob("model-*"))
    with pytest.raises(train.TrainingError, match="--logdir"):
        train.run(dataclasses.replace(config, logdir=str(blocker)))


def test_test_summary_prints_a_labelled_table_beside_the_papers_numbers(tmp_path, capsys):
    config = tiny(tmp_path, update_batch_size=5)  # The paper's 5-shot sinusoid test.
    train.run(config)
    result = train.run(dataclasses.replace(config, train=False))
    out = capsys.readouterr().out
    assert "Mean validation accuracy/loss, stddev, and confidence intervals" in out
    assert "| step | mean | 95% interval | median | paper |" in out
    row = next(line for line in out.splitlines() if line.startswith("| 10 | "))  # The step table's last row.
    assert row.startswith(f"| 10 | {result['means'][10]:.4g} |") and row.endswith("| 0.35 |")


def test_progress_reports_the_recent_rate_off_a_terminal(capsys):
    clock = [1000.0]
    progress = Progress(total=10000, enabled=True, first_s=20, every_s=60, window_s=60, clock=lambda: clock[0])
    progress.terminal, progress.lines = False, True  # As under nohup.
    clock[0] += 30  # Start-up (tracing): no iteration yet.
    for itr in range(5000, 5100):  # Then 10 iterations per second.
        clock[0] += 0.1
        progress.update(itr)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "10.00 it/s" in lines[0], lines  # The first line comes within the first minute.
    for itr in range(5100, 6000):
        clock[0] += 0.1
        progress.update(itr)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "10.00 it/s" in lines[0] and "ETA 00:07:1" in lines[0], lines  # 4400 left.


def test_unreadable_images_and_empty_classes_name_the_file(tmp_path):
    from PIL import Image
    from maml_tf.data.images import decode_image_files, from_class_lists, ImageTasks

    good, bad = tmp_path / "good.png", tmp_path / "truncated.png"
    Image.fromarray(np.zeros((28, 28), np.uint8), "L").save(good)
    bad.write_bytes(good.read_bytes()[:40])
    with pytest.raises(DataError, match="truncated.png"):
        decode_image_files([good, bad], (28, 28, 1))
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match="empty.png"):
        decode_image_files([tmp_path / "empty.png"], (28, 28, 1))
    classes = from_class_lists([np.zeros((3, 28, 28, 1), np.uint8), np.zeros((0, 28, 28, 1), np.uint8)],
                               ["alpha/char1", "alpha/char2"])
    with pytest.raises(DataError, match="alpha/char2"):
        ImageTasks(classes, num_ways=2, num_support=1, num_query=1, seed=0)


def test_library_shape_and_loss_errors():
    import keras
    import tensorflow as tf

    from maml_tf import meta_learner, networks
    from maml_tf.algorithms import TaskBatch

    model = networks.build_fc((1,), 1, [4], "None")
    x = tf.zeros([2, 3, 1])
    learner = meta_learner(model, "maml", loss="mse", inner_lr=0.1, num_inner_steps=1)
    with pytest.raises(ValueError, match=r"Labels of shape \[3, 3\] do not match the model's outputs \[3, 1\]"):
        learner.meta_gradients(TaskBatch(x, tf.zeros([2, 3, 3]), x, tf.zeros([2, 3, 3])))
    with pytest.raises(ValueError, match="same number of tasks"):
        learner.meta_gradients(TaskBatch(x[:1], x[:1], x, x))
    with pytest.raises(ValueError, match="must return a scalar float tensor"):
        meta_learner(model, "maml", loss_fn=lambda o, y: "loss", inner_lr=0.1,
                     num_inner_steps=1).meta_gradients(TaskBatch(x, x, x, x))
    with pytest.raises(ValueError, match="must return a float tensor"):
        meta_learner(model, "maml", loss=lambda y, o: "loss", inner_lr=0.1,
                     num_inner_steps=1).meta_gradients(TaskBatch(x, x, x, x))
    del keras


def test_main_prints_its_own_lines_only_and_one_line_errors(tmp_path):
    common = [sys.executable, str(ROOT / "main.py"), f"--logdir={tmp_path}", "--norm=None", "--update_batch_size=5",
              "--meta_batch_size=2", "--progress=False"]
    train_run = subprocess.run(common + ["--metatrain_iterations=2"], capture_output=True, text=True, timeout=300)
    test_run = subprocess.run(common + ["--train=False", "--num_test_tasks=3"], capture_output=True, text=True,
                              timeout=300)
    for proc in (train_run, test_run):
        assert proc.returncode == 0, proc.stderr
        assert not [line for line in (proc.stdout + proc.stderr).splitlines() if any(n in line for n in NOISE)]
    table = [line for line in test_run.stdout.splitlines() if line.startswith("| ")]
    last_step = next(line for line in table if line.startswith("| 10 | "))  # Then the predictive measures' table.
    assert table[0] == "| step | mean | 95% interval | median | paper |" and last_step.endswith("| 0.35 |")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = subprocess.run(common[:2] + [f"--logdir={blocker}", "--metatrain_iterations=2"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0 and "--logdir" in proc.stderr, proc.stderr
