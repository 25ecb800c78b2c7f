"""End to end: every model through stage 1 -> 2 -> 4 on the sample data, plus the failure paths.

Stages run in-process through the same `run_stage` the scripts call (imports once, so the
suite stays fast); one test goes through a real script under torchrun.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.checkpoints import load_checkpoint, stage_paths, weights_fingerprint
from common.cli import EXIT_INTERRUPTED, EXIT_USER_ERROR, run_stage
from common.model import MODEL_NAMES, student_from_options

REPO = Path(__file__).resolve().parents[1]
DATA = {"stage1_faceforensics": "faceforensics", "stage2_celebdf": "celebdf", "stage4_dfdc": "dfdc"}
STAGES = list(DATA)
SMALL = ["--backbone", "mobilenet_v3_small", "--pretrained", "none", "--image-size", "32",
         "--frames-per-video", "2", "--clip-len", "3", "--epochs", "1", "--batch-size", "8",
         "--workers", "0", "--max-videos", "6", "--device", "cpu", "--no-status"]


def args(root, work, stage, *extra):
    a = ["--data", str(root / DATA[stage]), "--checkpoint-dir", str(work / "ck"),
         "--cache-dir", str(work / "cache"), *SMALL, *extra]
    return a + (["--chunks", "0,1"] if stage == "stage4_dfdc" else [])


@pytest.fixture(scope="module")
def chained(sample_root, tmp_path_factory):
    """All five models, all three stages, one shared face cache."""
    work = tmp_path_factory.mktemp("chain")
    codes = {}
    for model in MODEL_NAMES:
        for stage in STAGES:
            codes[(model, stage)] = run_stage(model, stage, args(sample_root, work, stage))
    return work, codes


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_every_model_chains_through_three_stages(chained, model):
    work, codes = chained
    ck = work / "ck"
    for stage in STAGES:
        assert codes[(model, stage)] == 0, f"{model} {stage} failed"
        paths = stage_paths(ck, model, stage)
        assert paths.best.is_file() and paths.last.is_file() and paths.metrics.is_file()
        lines = [json.loads(x) for x in paths.metrics.read_text().splitlines()]
        epochs = [x for x in lines if "epoch" in x]
        assert epochs and "auc" in epochs[-1]["val"]["video"] and "final" in lines[-1]
        best = load_checkpoint(paths.best, model)
        assert best["stage"] == stage and best["temperature"] > 0
        assert best["recipe"]["stage"] == stage and "torch" in best["versions"]
    # Each later stage started from the previous stage's best weights, and says so.
    for prev, stage in zip(STAGES, STAGES[1:]):
        start = load_checkpoint(stage_paths(ck, model, stage).best, model)
        prev_best = load_checkpoint(stage_paths(ck, model, prev).best, model)
        assert start["start"]["kind"] == "previous"
        assert Path(start["start"]["path"]) == stage_paths(ck, model, prev).best
        assert start["init_fingerprint"] == pytest.approx(weights_fingerprint(prev_best["model"]))
    student = load_checkpoint(stage_paths(ck, model, "stage4_dfdc").student, model)
    net = student_from_options(student["model_options"])
    net.load_state_dict(student["model"])
    assert student["temperature"] > 0 and "val" in student["metrics"]


def test_stage2_reports_the_celebdf_test_list_but_never_selects_on_it(chained):
    work, _ = chained
    lines = [json.loads(x) for x in stage_paths(work / "ck", "bg", "stage2_celebdf").metrics.read_text().splitlines()]
    final = lines[-1]["final"]
    assert final["test"]["video"]["n"] > 0
    assert all("test" not in x for x in lines if "epoch" in x)  # per-epoch selection sees val only


def test_plots_are_valid_pngs(chained):
    work, _ = chained
    for suffix in (".roc.png", ".curves.png"):
        data = (work / "ck" / f"rr_stage1_faceforensics{suffix}").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_missing_previous_stage_names_the_script_and_writes_nothing(sample_root, tmp_path, capsys):
    code = run_stage("cm", "stage2_celebdf", args(sample_root, tmp_path, "stage2_celebdf"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_USER_ERROR and len(err) == 1
    assert "train_cm_stage1_faceforensics.py" in err[0]
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").iterdir())


def test_wrong_model_checkpoint_is_refused(chained, sample_root, tmp_path, capsys):
    work, _ = chained
    cm = stage_paths(work / "ck", "cm", "stage1_faceforensics").best
    code = run_stage("rr", "stage2_celebdf", args(sample_root, tmp_path, "stage2_celebdf", "--init", str(cm)))
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "CM model, not RR" in err


def test_wrong_data_path_exits_before_any_work(tmp_path, capsys):
    a = args(tmp_path, tmp_path, "stage1_faceforensics")
    a[a.index("--data") + 1] = str(tmp_path / "nowhere")
    assert run_stage("bg", "stage1_faceforensics", a) == EXIT_USER_ERROR
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


def _weights(path):
    return load_checkpoint(path)["model"]


def test_resume_after_interruption_matches_an_uninterrupted_run(sample_root, tmp_path, monkeypatch):
    import common.stage as stage_mod

    extra = ["--epochs", "2", "--frames-per-video", "8"]
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert run_stage("tm", "stage1_faceforensics", args(sample_root, straight, "stage1_faceforensics", *extra)) == 0

    calls = {"n": 0}

    def stop_after_three_steps(self):
        calls["n"] += 1
        return calls["n"] == 3  # mid-epoch 1, as a SIGTERM would

    monkeypatch.setattr(stage_mod.StopFlag, "__call__", stop_after_three_steps)
    code = run_stage("tm", "stage1_faceforensics", args(sample_root, broken, "stage1_faceforensics", *extra))
    assert code == EXIT_INTERRUPTED
    last = stage_paths(broken / "ck", "tm", "stage1_faceforensics").last
    assert load_checkpoint(last)["position"]["batches_done"] == 3
    monkeypatch.undo()
    assert run_stage("tm", "stage1_faceforensics",
                     args(sample_root, broken, "stage1_faceforensics", *extra, "--resume")) == 0
    a = _weights(stage_paths(straight / "ck", "tm", "stage1_faceforensics").last)
    b = _weights(last)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_torchrun_two_processes_write_one_set_of_files(sample_root, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
           str(REPO / "train_bg_stage1_faceforensics.py"), *args(sample_root, tmp_path, "stage1_faceforensics")]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    ck = tmp_path / "ck"
    names = sorted(p.name for p in ck.iterdir())
    assert "bg_stage1_faceforensics.pt" in names and "bg_stage1_faceforensics_last.pt" in names
    assert not [n for n in names if n.endswith(".tmp")]
    lines = stage_paths(ck, "bg", "stage1_faceforensics").metrics.read_text().splitlines()
    assert len([x for x in lines if '"epoch"' in x]) == 1  # rank 0 alone wrote the metrics


def test_dfdc_resume_continues_in_the_chunk_where_it_stopped(chained, sample_root, tmp_path, monkeypatch):
    """Stopped after one step of chunk 1 (the second chunk): --resume finishes that chunk and
    ends with the uninterrupted run's weights; the metrics show the chunks in the given order."""
    import common.stage as stage_mod

    work, _ = chained
    extra = ["--init", str(stage_paths(work / "ck", "tm", "stage2_celebdf").best), "--frames-per-video", "4"]
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert run_stage("tm", "stage4_dfdc", args(sample_root, straight, "stage4_dfdc", *extra)) == 0

    real, epochs = stage_mod.train_one_epoch, {"n": 0}

    def stop_in_second_chunk(*a, **kw):
        epochs["n"] += 1
        if epochs["n"] == 2:
            kw["stop_requested"] = lambda: True  # after the first step, as a SIGTERM would
        return real(*a, **kw)

    monkeypatch.setattr(stage_mod, "train_one_epoch", stop_in_second_chunk)
    assert run_stage("tm", "stage4_dfdc", args(sample_root, broken, "stage4_dfdc", *extra)) == EXIT_INTERRUPTED
    paths = stage_paths(broken / "ck", "tm", "stage4_dfdc")
    assert load_checkpoint(paths.last)["position"]["phase"] == 1
    assert load_checkpoint(paths.last)["position"]["batches_done"] == 1
    monkeypatch.undo()
    assert run_stage("tm", "stage4_dfdc", args(sample_root, broken, "stage4_dfdc", *extra, "--resume")) == 0
    chunks = [json.loads(x).get("chunk") for x in paths.metrics.read_text().splitlines() if '"epoch"' in x]
    assert chunks == [0, 1]
    a = _weights(stage_paths(straight / "ck", "tm", "stage4_dfdc").last)
    b = _weights(paths.last)
    for k in a:
        assert torch.equal(a[k], b[k]), k
