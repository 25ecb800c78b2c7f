"""`python -m common.evaluate`: held-out figures for every student and the ensemble.

Students are the tiny untrained ones of test_ensemble (bg and a TorchScript bg off chance,
rr constant), recorded as trained on DFDC parts 0 and 1; the ensemble is fit on their
DFDC validation list. Celeb-DF's test list and FF++'s official test split are held out."""
from __future__ import annotations

import contextlib
import io
import json
import math

import pytest

from common import evaluate
from common.data.datasets import index_dataset
from common.ensemble import command as ensemble, students
from common.faces.extraction import build_face_cache
from common.training.metrics import binary_metrics
from tests.test_ensemble import SETTINGS, SMALL, _off_chance, _save, _script, _student, contract, val_list

EVAL = ["--image-size", "32", "--frames-per-video", "2", "--face-detector", "none", "--workers", "0",
        "--device", "cpu", "--batch-size", "8"]


@pytest.fixture(scope="module")
def setup(sample_root, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("eval_students")
    cache_dir = tmp_path_factory.mktemp("eval_cache")
    data = sample_root / "dfdc"
    val = val_list(data)
    cache = students.make_cache(cache_dir, "dfdc", SETTINGS)
    build_face_cache(val, cache, progress=False)
    _save(ckpt, _off_chance("bg", val, cache), extra=contract(data))
    _save(ckpt, _student("rr", 0, constant=True), extra=contract(data))
    _script(_off_chance("bg", val, cache, first_seed=100, preprocessing="none"), ckpt / "ll_model_student.pt")
    with contextlib.redirect_stdout(io.StringIO()):
        assert ensemble.main(["fit", "--checkpoint-dir", str(ckpt), "--data", str(data),
                              "--cache-dir", str(cache_dir), *SMALL]) == 0
    return {"ckpt": ckpt, "cache": cache_dir, "root": sample_root}


def _run(setup, capsys, *argv) -> tuple[int, str, str]:
    code = evaluate.main(["--checkpoint-dir", str(setup["ckpt"]), "--cache-dir", str(setup["cache"]), *EVAL,
                          *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_celebdf_test_list_every_student_and_the_ensemble(setup, capsys, tmp_path):
    root = setup["root"] / "celebdf"
    code, out, err = _run(setup, capsys, "--dataset", "celebdf", "--data", root, "--out", tmp_path)
    assert code == 0, err
    report = json.loads((tmp_path / "evaluation.json").read_text())
    test = {r.rel: r.label for r in index_dataset("celebdf", root) if r.split == "test"}
    assert report["what"] == "Celeb-DF List_of_testing_videos.txt" and report["n_videos"] == len(test) == 5
    rows = report["rows"]
    assert list(rows) == ["bg", "rr", "ll", "ensemble"]
    for name, row in rows.items():
        scores = row["video_scores"]
        assert {v: s["label"] for v, s in scores.items()} == test  # exactly the test list
        y = [s["label"] for s in scores.values()]
        p = [s["score"] for s in scores.values()]
        want = binary_metrics(y, p)
        for key in ("auc", "ap", "eer", "log_loss"):
            assert math.isfinite(row["video"][key]) and row["video"][key] == pytest.approx(want[key]), (name, key)
    assert rows["bg"]["frame"]["n"] == 2 * 5 and rows["ensemble"]["frame"] is None
    # the constant student: AUC 0.5, EER 0.5, log loss ln 2
    assert rows["rr"]["video"]["auc"] == 0.5 and rows["rr"]["video"]["eer"] == 0.5
    assert rows["rr"]["video"]["log_loss"] == pytest.approx(math.log(2), abs=1e-6)
    # the ensemble's score of each video is its combiner applied to the students' scores
    ens = json.loads((setup["ckpt"] / "ensemble.json").read_text())
    assert rows["ensemble"]["combiners_used"] == {"bg, ll": 5}
    for vid, s in rows["ensemble"]["video_scores"].items():
        fused, _ = students.fuse({n: rows[n]["video_scores"][vid]["score"] for n in ("bg", "rr", "ll")}, ens)
        assert s["score"] == pytest.approx(fused, abs=1e-9)
    md = (tmp_path / "evaluation.md").read_text()
    assert "| model | frame AUC | video AUC | AP | EER | log loss | videos (real / fake) |" in md
    assert "| **ensemble** | n/a |" in md and "| model | frame AUC" in out
    assert (tmp_path / "evaluation_roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_faceforensics_official_test_split(setup, capsys):
    root = setup["root"] / "faceforensics"
    code, out, err = _run(setup, capsys, "--dataset", "faceforensics", "--data", root)
    assert code == 0, err
    report = json.loads((setup["ckpt"] / "evaluation" / "faceforensics" / "evaluation.json").read_text())
    test = {r.rel for r in index_dataset("faceforensics", root) if r.split == "test"}
    assert set(report["rows"]["bg"]["video_scores"]) == test and report["what"].startswith("FaceForensics++ official")
    code, _, err = _run(setup, capsys, "--dataset", "faceforensics", "--data", root, "--splits", root / "nowhere")
    assert code == 2 and "no official test.json" in err


def test_dfdc_parts_trained_on_are_refused(setup, capsys):
    root = setup["root"] / "dfdc"
    code, _, err = _run(setup, capsys, "--dataset", "dfdc", "--data", root)
    assert code == 2 and "every DFDC part here (0, 1) was trained or validated on" in err
    code, _, err = _run(setup, capsys, "--dataset", "dfdc", "--data", root, "--parts", "1")
    assert code == 2 and "part(s) 1 were trained or validated on" in err


def test_dfdc_untrained_part_is_scored(setup, capsys, tmp_path):
    root = setup["root"] / "dfdc"
    ck = tmp_path / "ck"
    ck.mkdir()
    bg = students.load_student(setup["ckpt"] / "bg_model_student.pt", "bg")
    part0 = contract(root)
    part0["data_index"]["kwargs"]["parts"] = [0]
    part0["val_videos"] = [r for r in part0["val_videos"] if "part_0/" in r]
    _save(ck, bg.model, extra=part0)
    code = evaluate.main(["--checkpoint-dir", str(ck), "--cache-dir", str(setup["cache"]), *EVAL,
                          "--dataset", "dfdc", "--data", str(root)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((ck / "evaluation" / "dfdc" / "evaluation.json").read_text())
    part1 = {r.rel for r in index_dataset("dfdc", root, parts=[1])}
    assert report["what"] == "DFDC parts 1 (no student trained or validated on them)"
    assert set(report["rows"]["bg"]["video_scores"]) == part1 and "ensemble" not in report["rows"]


def test_a_students_validation_videos_are_not_held_out(setup, capsys, tmp_path):
    root = setup["root"] / "celebdf"
    ck = tmp_path / "ck"
    ck.mkdir()
    test_rel = next(r.rel for r in index_dataset("celebdf", root) if r.split == "test")
    rr = _student("rr", 0, constant=True)
    _save(ck, rr, extra={"data_index": {"dataset": "celebdf", "kwargs": {}}, "val_videos": [test_rel],
                         "stage": "stage2_celebdf"})
    code = evaluate.main(["--checkpoint-dir", str(ck), "--cache-dir", str(setup["cache"]), *EVAL,
                          "--dataset", "celebdf", "--data", str(root)])
    err = capsys.readouterr().err
    assert code == 2 and "1 of 5 test videos were in stage2_celebdf's validation split (students rr)" in err


# ----------------------------------------------------------------------------- every stage is checked

@pytest.fixture(scope="module")
def stage1_without_splits(sample_root, tmp_path_factory):
    """BG's stage 1 trained on an FF++ copy without splits/ (so it made its own split), and a
    student file that, like one written before students kept their lineage, names only its
    final stage: evaluate has to find stage 1 in the checkpoint folder."""
    import shutil

    from common.cli import run_stage
    from common.training.checkpoints import load_checkpoint, save_checkpoint, stage_paths

    work = tmp_path_factory.mktemp("no_splits")
    ff = work / "ff"
    shutil.copytree(sample_root / "faceforensics", ff, ignore=shutil.ignore_patterns("splits"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("common.training.metrics.COLLAPSE_AUC", -1.0)  # one epoch on a few videos: chance
        code = run_stage("bg", "stage1_faceforensics", [
            "--data", str(ff), "--checkpoint-dir", str(work / "ck"), "--cache-dir", str(work / "cache"),
            "--backbone", "mobilenet_v3_small", "--pretrained", "none", "--image-size", "32",
            "--frames-per-video", "2", "--epochs", "1", "--batch-size", "8", "--workers", "0",
            "--face-detector", "none", "--device", "cpu", "--no-status"])
    assert code == 0
    best = load_checkpoint(stage_paths(work / "ck", "bg", "stage1_faceforensics").best, "bg")
    assert [e["stage"] for e in best["lineage"]] == ["stage1_faceforensics"]
    assert best["data_index"]["kwargs"]["use_split_files"] is False
    save_checkpoint({"model": best["model"], "model_options": best["model_options"], "temperature": 1.0,
                     "stage": "stage4_dfdc", "kind": "student", **contract(sample_root / "dfdc")},
                    work / "ck" / "bg_model_student.pt")
    # the split stage 1 made: pairs (by group) on each side
    by_split: dict = {}
    for r in index_dataset("faceforensics", ff):
        by_split.setdefault(r.split, set()).add(r.group)
    official = work / "official"
    official.mkdir()
    trained, unused = sorted(by_split["train"])[0], sorted(by_split["test"])[0]
    rest = sorted(by_split["train"] - {trained}) + sorted(by_split["val"])
    for split, groups in (("test", [trained, unused]), ("val", rest[:1]), ("train", rest[1:])):
        (official / f"{split}.json").write_text(json.dumps([g.split("_") for g in groups]))
    return {"ck": work / "ck", "ff": ff, "official": official, "cache": work / "eval_cache"}


def _eval_ff(s, capsys, *extra):
    code = evaluate.main(["--checkpoint-dir", str(s["ck"]), "--cache-dir", str(s["cache"]), *EVAL,
                          "--dataset", "faceforensics", "--data", str(s["ff"]), *map(str, extra)])
    return code, capsys.readouterr()


def test_test_videos_a_stage_trained_on_are_refused(stage1_without_splits, capsys):
    s = stage1_without_splits
    code, out = _eval_ff(s, capsys, "--splits", s["official"])
    # one test pair was in stage 1's own training split: its 2 originals and 2 x 2 fakes
    assert code == 2, out.err
    assert "error: 6 of 12 test videos were in stage1_faceforensics's training split (students bg)" in out.err
    assert "--allow-overlap" in out.err and not (s["ck"] / "evaluation").exists()


def test_split_files_added_later_do_not_hide_the_overlap(stage1_without_splits, capsys):
    import shutil

    s = stage1_without_splits
    shutil.copytree(s["official"], s["ff"] / "splits")  # now <data>/splits is the official one
    try:
        code, out = _eval_ff(s, capsys)
    finally:
        shutil.rmtree(s["ff"] / "splits")
    assert code == 2 and "6 of 12 test videos were in stage1_faceforensics's training split" in out.err


def test_allow_overlap_scores_only_the_others_and_says_so(stage1_without_splits, capsys):
    s = stage1_without_splits
    code, out = _eval_ff(s, capsys, "--splits", s["official"], "--allow-overlap", "--out", s["ck"] / "ev")
    assert code == 0, out.err
    report = json.loads((s["ck"] / "ev" / "evaluation.json").read_text())
    trained = {r.rel for r in index_dataset("faceforensics", s["ff"]) if r.split == "train"}
    scored = set(report["rows"]["bg"]["video_scores"])
    assert report["n_videos"] == len(scored) == 6 and not scored & trained
    heading = (s["ck"] / "ev" / "evaluation.md").read_text().splitlines()[0]
    assert "less the 6 videos a student's stage trained or validated on (--allow-overlap)" in heading


def test_faceless_videos_score_half_and_are_counted(setup, capsys, tmp_path):
    import shutil

    root = tmp_path / "celebdf"
    shutil.copytree(setup["root"] / "celebdf", root)
    (root / "Celeb-real" / "id4_0000.mp4").write_bytes(b"not a video")  # a real test video, no usable face
    code = evaluate.main(["--checkpoint-dir", str(setup["ckpt"]), "--cache-dir", str(tmp_path / "cache"), *EVAL,
                          "--dataset", "celebdf", "--data", str(root), "--out", str(tmp_path / "ev")])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    for name in ("bg", "rr", "ll", "ensemble"):
        row = report["rows"][name]
        assert row["video"]["n"] == 5 and row["videos_without_faces"] == {"real": 1, "fake": 0}, name
        assert row["video_scores"]["Celeb-real/id4_0000.mp4"]["score"] == 0.5, name
        scores = row["video_scores"].values()
        want = binary_metrics([v["label"] for v in scores], [v["score"] for v in scores])
        assert row["video"]["auc"] == pytest.approx(want["auc"]), name  # the 0.5 counts in the figures
    assert report["rows"]["bg"]["frame"]["n"] == 2 * 4  # frames only from the videos with a face
    md = (tmp_path / "ev" / "evaluation.md").read_text()
    assert "| no usable face, scored 0.5 (real / fake) |" in md and "| 1 (1 / 0) |" in md
