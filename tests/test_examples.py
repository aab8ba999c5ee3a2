"""Smoke runs of examples/: each runs end to end with tiny settings and prints its result line."""

import subprocess
import sys

from tests.conftest import ROOT, shared_path


def run(script, *flags):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script), *flags], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_sinusoid_subclassed_then_adapt_and_predict(tmp_path):
    out = run("sinusoid_subclassed.py", "--steps=20", "--test_tasks=10", f"--out={tmp_path}/sine.keras")
    assert "after 10 steps" in out and (tmp_path / "sine.keras").exists()
    out = run("adapt_and_predict.py", f"--model={tmp_path}/sine.keras", "--shots=5", "--steps=3")
    assert "MSE on the curve before" in out


def test_omniglot_custom_cnn_from_tfds():
    tfds = shared_path("data", "tfds", "omniglot").parent
    out = run("omniglot_custom_cnn.py", "--steps=4", "--meta_batch_size=2", "--filters=4", "--test_tasks=4",
              f"--tfds_data_dir={tfds}")
    assert "test tasks: accuracy before adaptation" in out


def test_readme_library_example_runs_as_printed(tmp_path, monkeypatch, capsys):
    text = (ROOT / "README.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)  # It saves meta.keras in the working folder.
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert (tmp_path / "meta.keras").exists()
    assert "pre_accuracy" in capsys.readouterr().out
