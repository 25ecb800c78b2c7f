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
    assert code == 2 and "every DFDC part here (0, 1) was trained on" in err
    code, _, err = _run(setup, capsys, "--dataset", "dfdc", "--data", root, "--parts", "1")
    assert code == 2 and "part(s) 1 were trained on" in err


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
    assert report["what"] == "DFDC parts 1 (no student trained on them)"
    assert set(report["rows"]["bg"]["video_scores"]) == part1 and "ensemble" not in report["rows"]


def test_a_students_validation_videos_are_not_held_out(setup, capsys, tmp_path):
    root = setup["root"] / "celebdf"
    ck = tmp_path / "ck"
    ck.mkdir()
    test_rel = next(r.rel for r in index_dataset("celebdf", root) if r.split == "test")
    rr = _student("rr", 0, constant=True)
    _save(ck, rr, extra={"data_index": {"dataset": "celebdf", "kwargs": {}}, "val_videos": [test_rel]})
    code = evaluate.main(["--checkpoint-dir", str(ck), "--cache-dir", str(setup["cache"]), *EVAL,
                          "--dataset", "celebdf", "--data", str(root)])
    assert code == 2 and "not held-out data" in capsys.readouterr().err
