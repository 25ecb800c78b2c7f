"""End to end: every model through stage 1 -> 2 -> 4 on the sample data, plus the failure paths.

Stages run in-process through the same `run_stage` the scripts call (imports once, so the
suite stays fast); one test goes through a real script under torchrun.
"""
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.cli import EXIT_INTERRUPTED, EXIT_USER_ERROR, run_stage
from common.model import MODEL_NAMES, student_from_options
from common.training.checkpoints import load_checkpoint, stage_paths, weights_fingerprint

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
def chained(sample_root, tmp_path_factory, yunet_model):
    """All five models, all three stages, one shared face cache. The students are untrained
    (one epoch, a few videos): the AUC part of the collapse rule is switched off so that a
    chance-level epoch does not end the chain (the rule itself is tested below)."""
    work = tmp_path_factory.mktemp("chain")
    codes = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("common.training.metrics.COLLAPSE_AUC", -1.0)
        for model in MODEL_NAMES:
            for stage in STAGES:
                codes[(model, stage)] = run_stage(model, stage, args(sample_root, work, stage))
    return work, codes


@pytest.fixture(autouse=True)
def untrained_students_are_not_collapsed():
    """These runs train for an epoch or two on a handful of videos: their AUC is chance. The
    rule is switched off for them (tests below switch it on, or to "always"); its own
    patcher, so a test's monkeypatch.undo() leaves it in place."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("common.training.metrics.COLLAPSE_AUC", -1.0)
        yield


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_every_model_chains_through_three_stages(chained, sample_root, model):
    work, codes = chained
    ck = work / "ck"
    for stage in STAGES:
        assert codes[(model, stage)] == 0, f"{model} {stage} failed"
        paths = stage_paths(ck, model, stage)
        assert paths.best.is_file() and paths.last.is_file() and paths.metrics.is_file()
        lines = [json.loads(x) for x in paths.metrics.read_text().splitlines()]
        epochs = [x for x in lines if "epoch" in x]
        assert [x["epoch"] for x in epochs] == list(range(1, len(epochs) + 1))
        assert epochs[-1]["val"]["video"]["n"] >= 2 and math.isfinite(epochs[-1]["val"]["loss"])
        assert sorted(lines[-1]) == ["final", "time"]
        best = load_checkpoint(paths.best, model)
        assert best["stage"] == stage and best["stage_finished"] is True
        assert best["recipe"]["stage"] == stage and best["versions"]["torch"] == str(torch.__version__)
        assert load_checkpoint(paths.last, model)["stage_finished"] is False
        final = lines[-1]["final"]
        assert best["temperature"] == final["temperature"] and 0.01 <= best["temperature"] <= 100
        # the data contract: index arguments and the exact validation list
        index = best["data_index"]
        assert index["dataset"] == DATA[stage] and index["root"] == str(sample_root / DATA[stage])
        assert index["max_videos"] == 6 and index["cap_seed"] == 42
        val = best["val_videos"]
        assert val == sorted(val) and 0 < len(val) <= 6 and all(isinstance(v, str) for v in val)
        assert 2 <= final["val"]["video"]["n"] <= len(val)
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
    best4 = load_checkpoint(stage_paths(ck, model, "stage4_dfdc").best, model)
    assert student["temperature"] == best4["temperature"]
    assert student["val_videos"] == best4["val_videos"] and student["data_index"]["kwargs"]["parts"] == [0, 1]
    assert student["metrics"]["val"]["video"]["n"] >= 2
    # the student names every stage its weights passed through, with each stage's data
    assert [e["stage"] for e in student["lineage"]] == STAGES
    for entry, stage in zip(student["lineage"], STAGES):
        best = load_checkpoint(stage_paths(ck, model, stage).best, model)
        assert entry["data_index"] == best["data_index"] and entry["val_videos"] == best["val_videos"]
    # two parts, both trained on: validation is the grouped split, and the files say so
    assert student["metrics"]["validation"] == "grouped by original (identities may cross)"


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


def test_resume_after_interruption_matches_an_uninterrupted_run(sample_root, tmp_path, monkeypatch, yunet_model):
    import common.training.stage as stage_mod

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


def test_torchrun_two_processes_write_one_set_of_files(sample_root, tmp_path, yunet_model):
    # The stage script's own code, with the AUC part of the collapse rule off (an untrained model).
    script = tmp_path / "train_bg_stage1_untrained.py"
    script.write_text("import sys\nimport common.training.metrics\ncommon.training.metrics.COLLAPSE_AUC = -1.0\n"
                      "from common.cli import run_stage\n"
                      "sys.exit(run_stage('bg', 'stage1_faceforensics'))\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(script), *args(sample_root, tmp_path, "stage1_faceforensics")]
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
    import common.training.stage as stage_mod

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


# ----------------------------------------------------------------------------- selection, completion

def _m(auc, collapsed):
    return {"video": {"auc": auc}, "collapse": {"collapsed": collapsed}}


def test_selection_never_prefers_a_collapsed_epoch():
    from common.training.stage_end import better

    state = {"best_auc": -math.inf}
    assert better(_m(0.99, True), state)                     # first epoch: anything
    state = {"best_auc": 0.99, "best_ok": False}             # best so far collapsed (e.g. no spread)
    assert better(_m(0.60, False), state)                    # a worse AUC that is not collapsed wins
    state = {"best_auc": 0.60, "best_ok": True}
    assert not better(_m(0.99, True), state)                 # a collapsed epoch never replaces it
    assert better(_m(0.61, False), state) and not better(_m(0.60, False), state)
    state = {"best_auc": 0.30, "best_ok": False}
    assert better(_m(0.40, True), state) and not better(_m(0.20, True), state)


def test_all_collapsed_stage_exits_3_and_the_next_stage_refuses_it(sample_root, tmp_path, monkeypatch, capsys, yunet_model):
    monkeypatch.setattr("common.training.metrics.COLLAPSE_AUC", 1.01)  # every epoch counts as collapsed
    code = run_stage("bg", "stage1_faceforensics", args(sample_root, tmp_path, "stage1_faceforensics"))
    err = capsys.readouterr().err
    assert code == 3 and "every epoch collapsed" in err
    paths = stage_paths(tmp_path / "ck", "bg", "stage1_faceforensics")
    best = load_checkpoint(paths.best, "bg")
    assert best["stage_finished"] is False and "every epoch collapsed" in best["stage_failed"]
    assert not paths.student.exists()
    assert '"failed"' in paths.metrics.read_text().splitlines()[-1]
    monkeypatch.undo()
    code = run_stage("bg", "stage2_celebdf", args(sample_root, tmp_path, "stage2_celebdf"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_USER_ERROR and len(err) == 1
    assert "unfinished stage (every epoch collapsed" in err[0] and f"--init {paths.best}" in err[0]
    assert not stage_paths(tmp_path / "ck", "bg", "stage2_celebdf").best.exists()


def test_an_interrupted_previous_stage_is_refused_unless_init(chained, sample_root, tmp_path, capsys):
    work, _ = chained
    src = stage_paths(work / "ck", "rr", "stage1_faceforensics")
    ck = tmp_path / "ck"
    ck.mkdir()
    last = load_checkpoint(src.last, "rr")  # a mid-stage state: stage_finished False
    from common.training.checkpoints import save_checkpoint
    save_checkpoint(last, stage_paths(ck, "rr", "stage1_faceforensics").best)
    code = run_stage("rr", "stage2_celebdf", args(sample_root, tmp_path, "stage2_celebdf"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_USER_ERROR and len(err) == 1
    assert "stopped before its last epoch" in err[0] and "--init" in err[0]
    prev = stage_paths(ck, "rr", "stage1_faceforensics").best
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("common.training.metrics.COLLAPSE_AUC", -1.0)
        code = run_stage("rr", "stage2_celebdf", args(sample_root, tmp_path, "stage2_celebdf", "--init", str(prev)))
    assert code == 0
    assert load_checkpoint(stage_paths(ck, "rr", "stage2_celebdf").best)["start"]["kind"] == "init"


def test_av_audio_branch_gets_the_stage4_multiplier():
    from common.training.engine import make_optimizer
    from common.model import AV_AUDIO_FUSION, build_student, lr_multipliers
    from common.recipes import RECIPES

    av = build_student("av", backbone="mobilenet_v3_small", pretrained="none", clip_len=3)
    rec4, rec1 = RECIPES["stage4_dfdc"], RECIPES["stage1_faceforensics"]
    assert rec4.av_audio_lr_multiplier == 10.0 and rec1.av_audio_lr_multiplier == 1.0
    opt, _ = make_optimizer(av, 1e-5, 0.05, 10, 0.0, 0.01, lr_multipliers("av", rec4))
    lr_of = {id(p): g["initial_lr"] for g in opt.param_groups for p in g["params"]}
    for name, p in av.named_parameters():
        want = 1e-4 if name.startswith(AV_AUDIO_FUSION) else 1e-5
        assert lr_of[id(p)] == pytest.approx(want), name
    assert sum(1 for n, _ in av.named_parameters() if n.startswith(AV_AUDIO_FUSION)) >= 8
    assert len(lr_of) == sum(1 for _ in av.parameters())      # every parameter is optimised once
    opt1, _ = make_optimizer(av, 1e-5, 0.05, 10, 0.0, 0.01, lr_multipliers("av", rec1))
    assert len(opt1.param_groups) == 2                         # other stages: the plain two groups
    assert lr_multipliers("bg", rec4) == {}


# ----------------------------------------------------------------------------- learning

def test_a_student_learns_a_separable_task():
    """Real frames have a dark band across the face, fakes a bright one: a student must reach
    validation video AUC >= 0.95 and at least halve its loss, in well under a minute."""
    import time

    from torch.utils.data import DataLoader

    from common.training.engine import make_optimizer, make_precision, train_one_epoch, validate
    from common.model import build_student

    def videos(n, seed):
        g = torch.Generator().manual_seed(seed)
        out = []
        for v in range(n):
            label = v % 2
            for f in range(2):
                img = torch.randint(60, 140, (1, 3, 32, 32), generator=g, dtype=torch.uint8)
                img[:, :, 12:20, :] = 230 if label else 20
                out.append({"frames": img, "label": torch.tensor(label), "video": f"s{seed}/v{v}.mp4"})
        return out

    torch.manual_seed(0)
    start = time.monotonic()
    model = build_student("bg", backbone="mobilenet_v3_small", pretrained="none")
    train = DataLoader(videos(32, 1), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    val = DataLoader(videos(16, 2), batch_size=16)
    epochs = 8
    opt, sched = make_optimizer(model, 1e-3, 0.0, epochs * len(train), 0.05, 0.01)
    precision = make_precision(torch.device("cpu"), amp=False)
    loss_fn = torch.nn.CrossEntropyLoss()
    losses = [train_one_epoch(model, train, loss_fn, opt, sched, precision)["loss"] for _ in range(epochs)]
    metrics, _ = validate(model, val, loss_fn, precision)
    assert time.monotonic() - start < 60
    assert losses[-1] <= losses[0] / 2, losses
    assert metrics["video"]["auc"] >= 0.95 and metrics["video"]["n"] == 16
    assert not metrics["collapse"]["collapsed"]


def test_a_stage_picks_the_non_collapsed_epoch_over_better_collapsed_ones(sample_root, tmp_path, monkeypatch, yunet_model):
    """Epoch AUCs 0.99 (collapsed), 0.60, 0.95 (collapsed): the checkpoint is epoch 2's."""
    import common.training.engine as engine

    real, calls = engine.evaluate, {"n": 0}
    script = [(0.99, True), (0.60, False), (0.95, True)]

    def scripted(*a, **kw):
        out = real(*a, **kw)
        auc, collapsed = script[calls["n"]]
        calls["n"] += 1
        out["video"]["auc"] = auc
        out["collapse"] = {"collapsed": collapsed, "reason": "scripted" if collapsed else ""}
        return out

    monkeypatch.setattr(engine, "evaluate", scripted)
    assert run_stage("cm", "stage1_faceforensics", args(sample_root, tmp_path, "stage1_faceforensics",
                                                         "--epochs", "3")) == 0
    paths = stage_paths(tmp_path / "ck", "cm", "stage1_faceforensics")
    lines = [json.loads(x) for x in paths.metrics.read_text().splitlines()]
    assert [x["best"] for x in lines if "epoch" in x] == [True, True, False]
    best = load_checkpoint(paths.best, "cm")
    assert best["position"]["phase"] == 2 and best["metrics"]["video"]["auc"] == 0.60
    assert best["stage_finished"] is True
