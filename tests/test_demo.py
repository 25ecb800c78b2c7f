"""`python -m common.demo`: its plan is the commands a user types, its table reads the files the
tools write, and any failed step or missed bar ends it with one line and a non-zero exit.

The full demo takes minutes and is measured by hand (README); here the plan is checked
against the real parsers, the plumbing runs with a stand-in runner that writes the files the
tools write, and once for real, in-process, on the tiny tree.
"""
from __future__ import annotations

import contextlib
import json
import math
import re
import runpy
import sys
from pathlib import Path

import pytest

from common import demo
from common.cli import build_parser
from common.recipes import RECIPES, STAGES

TINY = demo.PROFILES["tiny"]
TIMING = (r"Wall time \d+\.\d min \(\d+ s: data \d+ s, stages \d+–\d+ s each, "
          r"status / fit / evaluate / predict \d+ / \d+ / \d+ / \d+ s\)\.")


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


@pytest.fixture
def model_in_cache(tmp_path_factory, monkeypatch):
    """A file where the stages look for the YuNet model (the stand-in runner never loads it)."""
    from common.faces.detectors import MODEL_DIR_ENV, YUNET_FILE

    folder = tmp_path_factory.mktemp("models")
    (folder / YUNET_FILE).write_bytes(b"stand-in")
    monkeypatch.setenv(MODEL_DIR_ENV, str(folder))


@pytest.mark.usefixtures("tiny_tree", "model_in_cache")
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
    timing = table.split("\n\n")[2]
    assert re.fullmatch(TIMING, timing) and timing in out
    assert (tmp_path / "out" / "data" / "dfdc" / "dfdc_train_part_0" / "metadata.json").is_file()
    predict = calls[-1]
    assert [Path(v).parent.name for v in predict[3:5]] == ["dfdc_train_part_2"] * 2  # the held-out part


@pytest.mark.usefixtures("tiny_tree", "model_in_cache")
def test_a_collapsed_student_fails_the_demo_with_one_line(tmp_path, capsys):
    run, _ = fake_tools(aucs={("tm", "stage2_celebdf"): 0.5})
    assert demo.main([str(tmp_path / "out"), "--profile", "tiny"], runner=run) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["demo failed: TM stage2_celebdf collapsed (validation video AUC 0.500)"]
    assert "0.500 COLLAPSED" in (tmp_path / "out" / "demo.md").read_text()


@pytest.mark.usefixtures("tiny_tree", "model_in_cache")
def test_an_ensemble_below_the_bar_fails_the_demo(tmp_path, capsys):
    run, _ = fake_tools(ensemble_auc=0.85)
    assert demo.main([str(tmp_path / "out"), "--profile", "tiny"], runner=run) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "held-out video AUC is 0.850, below the bar of 0.9" in err[0]


@pytest.mark.usefixtures("tiny_tree", "model_in_cache")
def test_a_failing_step_stops_the_demo_and_names_it(tmp_path, capsys):
    run, calls = fake_tools(fail_at="train_av_stage2_celebdf.py")
    assert demo.main([str(tmp_path / "out"), "--profile", "tiny"], runner=run) == 1
    err = capsys.readouterr().err.strip().splitlines()
    log = tmp_path / "out" / "logs" / "av_stage2_celebdf.log"
    assert err == [f"demo failed: train_av_stage2_celebdf.py exited 3: training failed: loss is nan at step 3 "
                   f"(full log: {log})"]
    assert len(calls) == 5  # nothing after the failed step


@pytest.mark.usefixtures("model_in_cache")
def test_a_used_folder_is_refused(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert demo.main([str(tmp_path)], runner=fake_tools()[0]) == 2
    assert demo.main([str(tmp_path), "--overwrite"], runner=fake_tools()[0]) == 2  # not the demo's: never replaced
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: {tmp_path} is not empty and was not made by the demo; name a new or empty folder: "
                   "python -m common.demo NEW_FOLDER"] * 2
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.usefixtures("tiny_tree", "model_in_cache")
def test_a_rerun_says_how_to_replace_the_earlier_run_and_overwrite_does(tmp_path, capsys):
    out = tmp_path / "out"
    assert demo.main([str(out), "--profile", "tiny"], runner=fake_tools()[0]) == 0
    capsys.readouterr()
    run, calls = fake_tools()
    assert demo.main([str(out), "--profile", "tiny"], runner=run) == 2 and not calls
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {out} holds an earlier demo run; to run again, replace it: "
                   f"python -m common.demo {out} --overwrite (or name a new folder)"]
    (out / "logs" / "stale.log").write_text("from the first run")
    assert demo.main([str(out), "--profile", "tiny", "--overwrite"], runner=run) == 0 and len(calls) == 19
    assert not (out / "logs" / "stale.log").exists() and (out / "demo.md").is_file()


@pytest.mark.usefixtures("tiny_tree")
def test_a_missing_model_is_refused_before_any_data_in_one_whole_line(tmp_path, capsys, monkeypatch):
    from common.faces.detectors import MODEL_DIR_ENV, YUNET_FILE

    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path / "no models here"))  # and no network in tests
    run, calls = fake_tools()
    assert demo.main([str(tmp_path / "out"), "--profile", "tiny"], runner=run) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and not calls and not (tmp_path / "out").exists()
    assert err[0].startswith("error: the stages detect faces with YuNet, and its model is missing")
    assert f"{YUNET_FILE} (from https://" in err[0] and str(tmp_path / "no models here") in err[0]
    assert err[0].endswith(f"or set {MODEL_DIR_ENV} to a folder holding it, then run the demo again")


@pytest.mark.usefixtures("tiny_tree", "model_in_cache")
def test_too_little_disk_is_refused_before_any_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo, "NEEDS_FREE_BYTES", 1 << 60)  # more than any disk has
    run, calls = fake_tools()
    assert demo.main([str(tmp_path / "new" / "out"), "--profile", "tiny"], runner=run) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and not calls and not (tmp_path / "new").exists()
    assert err[0].startswith("error: only ") and f"GB free at {tmp_path};" in err[0]
    assert err[0].endswith("free some space or name a folder on another disk")


def test_the_readme_shows_the_table_and_the_timing_as_the_demo_writes_them():
    """The lead pastes demo.md into the README: same header, same row shapes, one timing line."""
    readme = (demo.REPO / "README.md").read_text()
    val = {(m, s): (0.123, False) for m in demo.MODELS for s in STAGES}
    table = demo.render(val, {m: 0.456 for m in (*demo.MODELS, "ensemble")}, f"DFDC part {demo.Profile().held_out_part}")
    shape = re.escape(table).replace(re.escape("0.123"), r"\d\.\d{3}").replace(re.escape("0.456"), r"\d\.\d{3}")
    assert re.search(shape, readme), "README: the demo table is not in the demo's format"
    assert len(re.findall(TIMING, readme)) == 1, "README: the demo's timing line, once"


def test_the_readmes_step_by_step_runs_the_demos_commands_on_its_paths():
    """Every flag and value of every demo step, with the demo's folder as $OUT, is in the
    README's hand-run block, and so is the sample data command."""
    readme = (demo.REPO / "README.md").read_text()
    block = readme.split("### Step by step", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    out, profile = Path("demo-run"), demo.Profile()
    assert "OUT=demo-run" in block and f"python -m common.sample_data $OUT/data --size {profile.sample_size}" in block
    for step in demo.plan(out, profile):
        argv = [a.replace(str(out), "$OUT", 1) for a in step.argv]
        if argv[0] == "-m":
            assert f"python -m {' '.join(argv[1:3] if argv[1] == 'common.ensemble' else argv[1:2])} " in block
        else:
            model, stage = _stage_of(argv[0])
            assert f"python train_${{m}}_{stage}.py" in block
        for flag, value in zip(argv, argv[1:] + [""]):
            if flag.startswith("--"):
                pair = flag if value.startswith("--") or not value else f"{flag} {value}"
                assert pair in block, f"{step.name}: {pair} is not in the README's step by step"
    assert "$OUT/data/dfdc/dfdc_train_part_2/*.mp4" in block  # predict's two videos come from there


def test_a_long_error_line_reaches_the_user_whole(tmp_path):
    line = "error: " + "a long reason, " * 40 + "and what to do: set DEEPFAKE_MODEL_DIR"
    (tmp_path / "step.log").write_text(f"INFO starting\n{line}\nINFO bye\n")
    assert demo.last_words(tmp_path / "step.log") == line


def test_the_timing_line_is_the_readmes():
    seconds = {"train_bg_stage1_faceforensics.py": 9.2, "train_tm_stage4_dfdc.py": 14.4, "common.status": 4.1,
               "common.ensemble fit": 9.0, "common.evaluate": 10.3, "common.ensemble predict": 6.8}
    assert demo.timing_line(225.4, 18.3, seconds) == (
        "Wall time 3.8 min (225 s: data 18 s, stages 9–14 s each, status / fit / evaluate / predict 4 / 9 / 10 / 7 s).")


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
def test_tiny_demo_runs_every_tool_for_real(tmp_path, capsys, monkeypatch, yunet_model):
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
