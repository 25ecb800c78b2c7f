"""One face path: what `common.ensemble predict` scores is what validation measured.

A CM student is trained for one epoch on the FaceForensics++ sample (YuNet, the default
detector), a combiner is fit over it, then every validation video goes through
`predict --json`. The video AUC recomputed from predict's scores must match the one in
the stage's metrics file: same crops (the fake's own detections, the same settings),
same frames, same transform.
"""
from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from common.cli import run_stage
from common.data.datasets import index_dataset
from common.ensemble import command as ensemble, students
from common.faces.cache import FaceCache
from common.training.checkpoints import load_checkpoint, save_checkpoint, stage_paths
from common.training.metrics import binary_metrics

SMALL = ["--backbone", "mobilenet_v3_small", "--pretrained", "none", "--image-size", "32",
         "--frames-per-video", "2", "--clip-len", "3", "--epochs", "1", "--batch-size", "8",
         "--workers", "0", "--device", "cpu", "--no-status"]


@pytest.fixture(scope="module")
def trained(sample_root, tmp_path_factory, yunet_model):
    work = tmp_path_factory.mktemp("facepath")
    data = sample_root / "faceforensics"
    code = run_stage("cm", "stage1_faceforensics",
                     ["--data", str(data), "--checkpoint-dir", str(work / "ck"),
                      "--cache-dir", str(work / "cache"), *SMALL])
    assert code == 0
    return work, data


def test_predict_scores_give_the_validation_auc_of_the_metrics_file(trained):
    work, data = trained
    paths = stage_paths(work / "ck", "cm", "stage1_faceforensics")
    best = load_checkpoint(paths.best, "cm")
    assert best["faces"]["detector"] == "yunet" and best["faces"]["max_gap_s"] == 0.5
    assert best["faces"]["view"] == "native"  # CM's view: predict below must serve it too
    epochs = [json.loads(x) for x in paths.metrics.read_text().splitlines() if '"epoch"' in x]
    trained_auc = epochs[-1]["val"]["video"]["auc"]  # one epoch: the best one
    # the student file as the final stage writes it (stage 4 would take minutes here)
    save_checkpoint({"model": best["model"], "model_options": best["model_options"],
                     "temperature": 1.0, "metrics": best["metrics"], "stage": best["stage"],
                     "config": best["config"], "kind": "student", "faces": best["faces"],
                     "stage_finished": True, "data_index": best["data_index"],
                     "val_videos": best["val_videos"]},
                    paths.student)

    # fit needs a combiner; one student is enough (the current fit code, as it is)
    with contextlib.redirect_stdout(io.StringIO()):
        assert ensemble.main(["fit", "--checkpoint-dir", str(work / "ck"), "--data", str(data),
                              "--cache-dir", str(work / "fit-cache"), "--workers", "0",
                              "--device", "cpu"]) == 0
    val = [r for r in index_dataset("faceforensics", data) if r.split == "val"]
    assert {r.label for r in val} == {0, 1}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ensemble.main(["predict", *[r.path for r in val], "--checkpoint-dir", str(work / "ck"),
                       "--json", "--device", "cpu"])
    results = {json.loads(line)["video"]: json.loads(line) for line in out.getvalue().splitlines()}
    assert all(results[r.path]["ok"] for r in val), results
    scores = [results[r.path]["students"]["cm"]["score"] for r in val]
    auc = binary_metrics([r.label for r in val], scores)["auc"]
    print(f"video AUC from predict {auc:.4f}, metrics file {trained_auc:.4f}")
    assert abs(auc - trained_auc) <= 0.01, (auc, trained_auc)
    # stronger: each video's score equals the one from the stage's own validation cache
    ens = json.loads((work / "ck" / students.ENSEMBLE_FILE).read_text())
    st = students.load_student(paths.student, "cm")
    st.temperature = next(m["temperature"] for m in ens["models"] if m["name"] == "cm")
    settings = students.Settings(**ens["settings"])
    stage_cache = FaceCache(work / "cache", "faceforensics", 32, 2, 3, "yunet")
    ids, _, probs = students.score_videos(st, val, stage_cache, settings, torch.device("cpu"))
    by_rel = {r.rel: r.path for r in val}
    for rel, p in zip(ids, probs):
        assert results[by_rel[rel]]["students"]["cm"]["score"] == pytest.approx(float(p), abs=1e-4)
