"""`python -m common.demo`: its plan is the commands a user types, its table reads the files the
tools write, and any failed step or missed bar ends it with one line and a non-zero exit.

The full demo (about ten minutes) is measured by hand (README); here the plan is checked
against the real parsers, the plumbing runs with a stand-in runner that writes the files the
tools write, and once for real, in-process, on the tiny tree.
"""
from __future__ import annotations

import contextlib
import json
import math
import runpy
import sys
from pathlib import Path

import pytest

from common import demo
from common.cli import build_parser
from common.recipes import RECIPES, STAGES

TINY = demo.PROFILES["tiny"]


def _stage_of(script: str) -> tuple[str, str]:
    model, rest = script.removeprefix("train_").removesuffix(".py").split("_", 1)
    return model, rest


def test_plan_is_the_fifteen_scripts_then_status_fit_evaluate_predict(tmp_path):
    steps = demo.plan(tmp_path, demo.PROFILES["demo"])
    names = [s.name for s in steps]
    assert names[:15] == [f"train_{m}_{s}.py" for m in demo.MODELS for s in STAGES]
    assert names[15:] == ["common.status", "common.ensemble fit", "common.evaluate", "common.ensemble predict"]
    for step in steps[:15]:
        assert (demo.REPO / step.argv[0]).is_file()
        model, stage = _stage_of(step.argv[0])
        args = build_parser(model, stage).parse_args(step.argv[1:])  # flags a user could type
        assert args.data == tmp_path / "data" / RECIPES[stage].dataset
        assert args.checkpoint_dir == tmp_path / "checkpoints" and args.cache_dir == tmp_path / "cache"
        assert args.status_file == tmp_path / "TRAINING_STATUS.md"
        assert (args.backbone, args.pretrained, args.image_size, args.clip_len) == ("mobilenet_v3_small", "none", 48, 3)
        assert args.face_detector == build_parser(model, stage).get_default("face_detector")  # the default
        assert args.epochs == demo.PROFILES["demo"].epochs[stage] <= RECIPES[stage].epochs
        if RECIPES[stage].chunks:
            assert args.chunks == (0,) and args.val_parts == (1,)  # part 2 stays held out
    from common import evaluate
    from common.ensemble import command as ensemble

    fit = ensemble.build_parser().parse_args(steps[16].argv[2:])
    assert (fit.command, fit.data, fit.dataset) == ("fit", tmp_path / "data" / "dfdc", "dfdc")
    held = evaluate.build_parser().parse_args(steps[17].argv[2:])
    assert (held.dataset, held.split, held.parts, held.data) == ("dfdc", "test", (2,), tmp_path / "data" / "dfdc")
    predict = ensemble.build_parser().parse_args(steps[18].argv[2:])
    assert predict.command == "predict" and len(predict.videos) == 2
    assert {Path(v).parent for v in predict.videos} == {tmp_path / "data" / "dfdc" / "dfdc_train_part_2"}


def _final(auc: float, collapsed: bool = False) -> dict:
    video = {"auc": auc, "n": 12, "n_fake": 6}
    return {"final": {"stage": "x", "val": {"video": video}, "best_val_video_auc": auc, "collapsed": collapsed}}


def fake_tools(aucs: dict | None = None, ensemble_auc: float = 0.97, fail_at: str | None = None):
    """A runner that writes what the real tools write: a metrics file ending in a `final` line
    per stage, evaluation.json for common.evaluate; `fail_at` exits 3 with an error line."""
    calls = []

    def run(argv: list[str], log: Path) -> int:
        calls.append(argv)
        name = argv[0] if argv[0] != "-m" else " ".join(argv[1:3]) if argv[1] == "common.ensemble" else argv[1]
        if name == fail_at:
            log.write_text("12:00:00 INFO starting\ntraining failed: loss is nan at step 3\n")
            return 3
        ck = Path(argv[argv.index("--checkpoint-dir") + 1])
        ck.mkdir(parents=True, exist_ok=True)
        if name.startswith("train_"):
            model, stage = _stage_of(name)
            lines = [{"epoch": 1, "val": {"video": {"auc": 0.6}}}, _final((aucs or {}).get((model, stage), 0.95),
                                                                           (aucs or {}).get((model, stage), 1) <= 0.55)]
            (ck / f"{model}_{stage}.metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        elif name == "common.evaluate":
            out = ck / "evaluation" / "dfdc"
            out.mkdir(parents=True, exist_ok=True)
            rows = {m: {"video": {"auc": 0.9}} for m in demo.MODELS} | {"ensemble": {"video": {"auc": ensemble_auc}}}
            (out / "evaluation.json").write_text(json.dumps({"rows": rows}))
        log.write_text("done\n")
        return 0

    return run, calls


@pytest.fixture
def tiny_tree(sample_root, monkeypatch):
    """make_all -> a copy of the session's tiny tree (the stand-in tests need files, not new ones)."""
    import shutil

    def copy(out, size="tiny", **_):
        assert size == TINY.sample_size
        shutil.copytree(sample_root, out)  # no held-out DFDC part: predict gets names only
        return {name: sorted((Path(out) / name).rglob("*.mp4")) for name in ("faceforensics", "celebdf", "dfdc")}

    monkeypatch.setattr("common.data.synthetic.make_all", copy)


@pytest.mark.usefixtures("tiny_tree")
def test_every_bar_met_prints_the_table_and_exits_0(tmp_path, capsys):
    run, calls = fake_tools()
    assert demo.main([str(tmp_path / "out"), "--profile", "tiny"], runner=run) == 0
    out = capsys.readouterr().out
    assert len(calls) == 19
    table = (tmp_path / "out" / "demo.md").read_text()
    for model in demo.MODELS:
        assert f"| {model.upper()} | 0.950 | 0.950 | 0.950 | 0.900 |" in table
    assert "| student | FF++ val (kept epoch) | Celeb-DF val (kept epoch) | DFDC val (kept epoch) |" in table
    assert "| **ensemble** |  |  |  | **0.970** |" in table
    assert "all bars met" in table and table.split("\n\n")[1] in out
    assert (tmp_path / "out" / "data" / "dfdc" / "dfdc_train_part_0" / "metadata.json").is_file()
    predict = calls[-1]
    assert [Path(v).parent.name for v in predict[3:5]] == ["dfdc_train_part_2"] * 2  # the held-out part


@pytest.mark.usefixtures("tiny_tree")
def test_a_collapsed_student_fails_the_demo_with_one_line(tmp_path, capsys):
    run, _ = fake_tools(aucs={("tm", "stage2_celebdf"): 0.5})
    assert demo.main([str(tmp_path / "out"), "--profile", "tiny"], runner=run) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["demo failed: TM stage2_celebdf collapsed (validation video AUC 0.500)"]
    assert "0.500 COLLAPSED" in (tmp_path / "out" / "demo.md").read_text()


@pytest.mark.usefixtures("tiny_tree")
def test_an_ensemble_below_the_bar_fails_the_demo(tmp_path, capsys):
    run, _ = fake_tools(ensemble_auc=0.85)
    assert demo.main([str(tmp_path / "out"), "--profile", "tiny"], runner=run) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "held-out video AUC is 0.850, below the bar of 0.9" in err[0]


@pytest.mark.usefixtures("tiny_tree")
def test_a_failing_step_stops_the_demo_and_names_it(tmp_path, capsys):
    run, calls = fake_tools(fail_at="train_av_stage2_celebdf.py")
    assert demo.main([str(tmp_path / "out"), "--profile", "tiny"], runner=run) == 1
    err = capsys.readouterr().err.strip().splitlines()
    log = tmp_path / "out" / "logs" / "av_stage2_celebdf.log"
    assert err == [f"demo failed: train_av_stage2_celebdf.py exited 3: training failed: loss is nan at step 3 "
                   f"(full log: {log})"]
    assert len(calls) == 5  # nothing after the failed step


def test_a_used_folder_is_refused(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert demo.main([str(tmp_path)], runner=fake_tools()[0]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def in_process(argv: list[str], log: Path) -> int:
    """The runner, without the subprocess: the same entry points, torch imported once."""
    target = argv[1] if argv[0] == "-m" else str(demo.REPO / argv[0])
    rest = argv[2:] if argv[0] == "-m" else argv[1:]
    with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f), \
            pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", [target, *rest])
        try:
            if argv[0] == "-m":
                runpy.run_module(target, run_name="__main__", alter_sys=False)
            else:
                runpy.run_path(target, run_name="__main__")
        except SystemExit as e:
            return int(e.code or 0)
    return 0


@pytest.mark.filterwarnings("ignore:.*found in sys.modules")  # runpy on an imported module
def test_tiny_demo_runs_every_tool_for_real(tmp_path, capsys, monkeypatch):
    """Untrained students on the tiny tree: every step runs and writes its files. The
    collapse rule is off (one epoch on a handful of videos is chance, or flat), so the
    table has numbers everywhere; the ensemble usually misses the bar then."""
    monkeypatch.setattr("common.training.metrics.COLLAPSE_AUC", -1.0)
    monkeypatch.setattr("common.training.metrics.COLLAPSE_SPREAD", -1.0)
    out = tmp_path / "out"
    code = demo.main([str(out), "--profile", "tiny"], runner=in_process)
    stdout, err = capsys.readouterr()
    ck = out / "checkpoints"
    for model in demo.MODELS:
        assert (ck / f"{model}_model_student.pt").is_file()
    assert (ck / "ensemble.json").is_file()
    report = json.loads((ck / "evaluation" / "dfdc" / "evaluation.json").read_text())
    assert report["what"].startswith("DFDC parts 2") and "ensemble" in report["rows"]
    val, held = demo.collect(ck, ck / "evaluation" / "dfdc" / "evaluation.json")
    assert all(math.isfinite(auc) and not collapsed for auc, collapsed in val.values())
    assert held["ensemble"] == report["rows"]["ensemble"]["video"]["auc"]
    assert "[19/19] common.ensemble predict" in stdout
    assert stdout.count("p(fake)") == 2  # one verdict per video
    if held["ensemble"] >= demo.ENSEMBLE_BAR:
        assert code == 0
    else:
        assert code == 1 and err.strip().splitlines()[-1].startswith("demo failed: the ensemble's held-out")


def test_steps_get_one_thread_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("DEMO_TEST_MARK", "kept")
    env = demo.child_env()
    assert env["OMP_NUM_THREADS"] == "1" and env["DEMO_TEST_MARK"] == "kept"
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert demo.child_env()["OMP_NUM_THREADS"] == "4"
