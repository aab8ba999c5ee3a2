"""Smoke tests of the whole program: main.py trains, resumes, tests; bad flags give usage errors."""

import csv
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, shared_path


def run_main(*flags, check=True):
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "--progress=False", *flags],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"main.py {' '.join(flags)} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}")
    return proc


def read_csv(path):
    with open(path) as f:
        return list(csv.reader(f))


def test_sinusoid_train_resume_test(tmp_path):
    common = [f"--logdir={tmp_path}", "--norm=None", "--update_batch_size=3", "--meta_batch_size=2"]
    out = run_main(*common, "--metatrain_iterations=3").stdout
    exp = tmp_path / "cls_5.mbs_2.ubs_3.numstep1.updatelr0.001nonorm"
    assert "from iteration 0 to 3" in out and (exp / "model-2.index").exists()
    out = run_main(*common, "--metatrain_iterations=5").stdout
    assert "Restoring model weights" in out and "from iteration 3 to 5" in out
    assert (exp / "model-4.index").exists() and list(exp.glob("events.out.tfevents*"))
    out = run_main(*common, "--train=False", "--num_test_tasks=4").stdout
    rows = read_csv(exp / "test_ubs3_stepsize0.001.csv")
    assert rows[0] == [f"update{i}" for i in range(11)] and len(rows) == 4
    mses = pickle.load(open(exp / "test_ubs3_stepsize0.001.pkl", "rb"))["mses"]
    assert mses.shape == (4, 11) and np.all(np.isfinite(mses))
    np.testing.assert_allclose(np.asarray(rows[1], float), mses.mean(0), rtol=1e-5)
    assert (exp / "test_ubs3_stepsize0.001.png").exists()
    assert "Mean validation accuracy/loss" in out


def test_mixed_precision_sinusoid_train_resume(tmp_path):
    import tensorflow as tf

    common = [f"--logdir={tmp_path}", "--update_batch_size=3", "--meta_batch_size=2"]
    run_main(*common, "--metatrain_iterations=3")  # float32, resumed in mixed precision and back.
    out = run_main(*common, "--mixed_precision", "--metatrain_iterations=5").stdout
    assert "Restoring model weights" in out and "from iteration 3 to 5" in out
    (checkpoint,) = tmp_path.glob("*/model-4.index")
    names = [name for name, _ in tf.train.list_variables(str(checkpoint)[:-len(".index")])]
    assert any(name.startswith("loss_scale/scale") for name in names)
    out = run_main(*common, "--metatrain_iterations=6").stdout
    assert "from iteration 5 to 6" in out


def test_export_then_import_original_checkpoint(tmp_path):
    common = [f"--logdir={tmp_path}", "--norm=None", "--update_batch_size=2", "--meta_batch_size=2"]
    run_main(*common, "--metatrain_iterations=2", f"--export_checkpoint={tmp_path}/tf1/model1")
    assert (tmp_path / "tf1" / "model1.index").exists()
    out = run_main(f"--logdir={tmp_path}/other", "--norm=None", "--update_batch_size=2", "--train=False",
                   "--num_test_tasks=2", f"--import_checkpoint={tmp_path}/tf1/model1").stdout
    assert "Imported the original's checkpoint" in out
    assert list((tmp_path / "other").glob("*/test_ubs2_stepsize0.001.csv"))
    proc = run_main(f"--logdir={tmp_path}/other", "--train=False", f"--import_checkpoint={tmp_path}/tf1/model1",
                    check=False)  # batch_norm flags: the checkpoint has no batch-norm offsets.
    assert proc.returncode == 1 and "Missing" in proc.stderr and "Traceback" not in proc.stderr


def test_omniglot_from_tfds_smoke(tmp_path):
    tfds_dir = shared_path("data", "tfds", "omniglot")
    common = [f"--logdir={tmp_path}", "--datasource=omniglot", "--omniglot_source=tfds",
              f"--tfds_data_dir={tfds_dir.parent}", "--update_batch_size=1", "--meta_batch_size=2",
              "--num_filters=8", "--update_lr=0.4"]
    run_main(*common, "--metatrain_iterations=2")
    out = run_main(*common, "--train=False", "--num_test_tasks=3").stdout
    exp = tmp_path / "cls_5.mbs_2.ubs_1.numstep1.updatelr0.4hidden8batchnorm"
    values = pickle.load(open(exp / "test_ubs1_stepsize0.4.pkl", "rb"))["mses"]
    assert values.shape == (3, 11) and np.all((values >= 0) & (values <= 1))
    assert "Mean validation accuracy/loss" in out
    predictive = json.load(open(exp / "test_ubs1_stepsize0.4.uncertainty.json"))  # MAML: its one softmax.
    assert predictive["tasks"] == 3 and predictive["samples"] == 1
    assert predictive["summary"]["accuracy"]["mean"] == pytest.approx(values[:, 1].mean())


@pytest.mark.parametrize("flags, message", [
    (["--datasource=cifar"], "--datasource"),
    (["--norm=batchnorm"], "--norm"),
    (["--algorithm=nope"], "--algorithm"),
    (["--datasource=omniglot", "--baseline=oracle"], "oracle"),
    (["--meta_batch_size=-2"], "meta_batch_size"),
    (["--algorithm=reptile", "--reptile_foml_tail=1"], "--reptile_foml"),
    (["--algorithm=reptile", "--pretrain_iterations=5"], "pretrain_iterations"),
    (["--algorithm=maml++", "--norm=layer_norm"], "batch norm"),
    (["--algorithm=mamlpp", "--mamlpp_multi_step_loss_num_epochs=0"], "--mamlpp_multi_step_loss_num_epochs"),
    (["--val_tasks=0"], "--val_tasks"),
    (["--algorithm=bmaml", "--bmaml_num_particles=0"], "--bmaml_num_particles"),
    (["--algorithm=bmaml", "--bmaml_gamma_b=0"], "--bmaml_gamma_b"),
    (["--algorithm=platipus", "--platipus_kl_weight=-1"], "--platipus_kl_weight"),
    (["--algorithm=llama", "--llama_eta=-1"], "--llama_eta"),
    (["--algorithm=llama", "--mixed_precision=True"], "--mixed_precision"),
    (["--datasource=multimodal_regression", "--num_modes=7"], "--num_modes"),
])
def test_bad_flags_are_usage_errors(flags, message):
    proc = run_main(*flags, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_missing_checkpoint_and_data_are_clear_errors(tmp_path):
    proc = run_main(f"--logdir={tmp_path}", "--train=False", check=False)
    assert proc.returncode == 1 and "No checkpoint" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_main(f"--logdir={tmp_path}", "--datasource=omniglot", f"--data_dir={tmp_path}",
                    "--metatrain_iterations=1", check=False)
    assert proc.returncode == 1 and "prepare_omniglot" in proc.stderr and "Traceback" not in proc.stderr


def test_reptile_sinusoid_train_resume_test(tmp_path):
    common = [f"--logdir={tmp_path}", "--algorithm=reptile", "--norm=None", "--update_batch_size=3",
              "--meta_batch_size=2", "--reptile_inner_iters=2", "--reptile_inner_batch=3", "--reptile_eval_iters=2"]
    run_main(*common, "--metatrain_iterations=3")
    exp = tmp_path / "cls_5.mbs_2.ubs_3.numstep1.updatelr0.001nonorm.reptile.ts3.ib3.ii2.lr0.001.ms0.1-0.1"
    assert (exp / "model-2.index").exists()
    out = run_main(*common, "--metatrain_iterations=5").stdout
    assert "Restoring model weights" in out and "from iteration 3 to 5" in out
    run_main(*common, "--train=False", "--num_test_tasks=3")
    rows = read_csv(exp / "test_ubs3_stepsize0.001.eb5.ei2.nontransductive.csv")
    assert rows[0] == ["update0", "update1"] and len(rows) == 4
    assert (exp / "test_ubs3_stepsize0.001.eb5.ei2.nontransductive.png").exists()


def test_reptile_omniglot_both_evaluation_modes(tmp_path):
    tfds_dir = shared_path("data", "tfds", "omniglot")
    common = [f"--logdir={tmp_path}", "--datasource=omniglot", "--omniglot_source=tfds", "--algorithm=reptile",
              f"--tfds_data_dir={tfds_dir.parent}", "--update_batch_size=1", "--meta_batch_size=2",
              "--num_filters=8", "--reptile_train_shots=2", "--reptile_inner_batch=4", "--reptile_inner_iters=2",
              "--reptile_eval_iters=3", "--reptile_meta_step=1", "--reptile_meta_step_final=0"]
    run_main(*common, "--metatrain_iterations=2")
    exp = next(tmp_path.glob("cls_5.mbs_2.ubs_1.*reptile.ts2*"))
    for mode in ("True", "False"):
        run_main(*common, "--train=False", "--num_test_tasks=3", f"--reptile_transductive={mode}")
    for name in ("transductive", "nontransductive"):
        values = pickle.load(open(exp / f"test_ubs1_stepsize0.001.eb5.ei3.{name}.pkl", "rb"))["mses"]
        assert values.shape == (3, 2) and np.all((values >= 0) & (values <= 1))


IMAML_FLAGS = ["--algorithm=imaml", "--imaml_n_steps=2", "--imaml_cg_steps=2", "--imaml_hf_cg_steps=2",
               "--meta_batch_size=2"]


def test_imaml_sinusoid_train_resume_test(tmp_path):
    sine = [f"--logdir={tmp_path}", *IMAML_FLAGS, "--norm=None", "--update_batch_size=3"]
    run_main(*sine, "--metatrain_iterations=2")
    out = run_main(*sine, "--metatrain_iterations=3").stdout
    assert "from iteration 2 to 3" in out
    run_main(*sine, "--train=False", "--num_test_tasks=2")
    exp = next(tmp_path.glob("cls_5.mbs_2.ubs_3.*nonorm.imaml.gd*"))
    assert read_csv(exp / "test_ubs3_stepsize0.001.csv")[0] == ["update0", "update1"]


def test_imaml_hessian_free_omniglot(tmp_path):
    solver = "hessian_free"
    common = [f"--logdir={tmp_path}", *IMAML_FLAGS, f"--imaml_solver={solver}"]
    tfds_dir = shared_path("data", "tfds", "omniglot")
    omniglot = [*common, "--datasource=omniglot", "--omniglot_source=tfds", f"--tfds_data_dir={tfds_dir.parent}",
                "--update_batch_size=1", "--num_filters=8"]
    run_main(*omniglot, "--metatrain_iterations=1")
    run_main(*omniglot, "--train=False", "--num_test_tasks=2")
    exp = next(tmp_path.glob(f"cls_5.mbs_2.ubs_1.*batchnorm.imaml.{solver}*"))
    values = pickle.load(open(exp / "test_ubs1_stepsize0.001.pkl", "rb"))["mses"]
    assert values.shape == (2, 2) and np.all((values >= 0) & (values <= 1))
