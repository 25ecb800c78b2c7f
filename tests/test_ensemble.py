"""The stacking ensemble: fit on the DFDC sample's validation split, predict on video files.

Students are tiny untrained models saved straight to `<m>_model_student.pt` (training them
through the stage scripts would take minutes). Each random student's seed is chosen so that
it is not at chance on the (4-video) validation split; RR's head is zeroed so it says 0.5
for everything and must get weight 0.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from common import ensemble
from common.checkpoints import save_checkpoint
from common.ensemble_fit import (check_classes, chance_reason, fit_combiner,
                                 validation_records)
from common.errors import UserError
from common.face_cache import build_face_cache
from common.metrics import binary_metrics
from common.model import build_student

SMALL = ["--image-size", "32", "--frames-per-video", "2", "--face-detector", "none",
         "--workers", "0", "--device", "cpu", "--batch-size", "8"]
SETTINGS = ensemble.Settings(image_size=32, frames_per_video=2, clip_len=3, detector="none")
SPLIT_SEED = 42  # the stage scripts' default seed, which the fit uses to redraw the split


def _student(name: str, seed: int, constant: bool = False):
    torch.manual_seed(seed)
    model = build_student(name, backbone="mobilenet_v3_small", pretrained="none", clip_len=3)
    if constant:  # logits always (0, 0): p = 0.5 for every video, AUC 0.5
        torch.nn.init.zeros_(model.head[-1].weight)
        torch.nn.init.zeros_(model.head[-1].bias)
    return model.eval()


def _save(folder: Path, model, name: str | None = None) -> Path:
    name = name or model.name
    path = folder / f"{name}_model_student.pt"
    save_checkpoint({"model": model.state_dict(), "model_options": dict(model.options, name=name),
                     "temperature": 1.0, "metrics": {"val": {"video": {"auc": 0.75}}},
                     "stage": "stage4_dfdc", "kind": "student"}, path)
    return path


@pytest.fixture(scope="module")
def fitted(sample_root, tmp_path_factory):
    """Checkpoint dir with bg and av (seeds off chance), rr (constant) and an incompatible ll,
    the DFDC sample's validation face cache, and one `fit` run over them."""
    ckpt = tmp_path_factory.mktemp("students")
    cache_dir = tmp_path_factory.mktemp("cache")
    data = sample_root / "dfdc"
    val = validation_records(data, "dfdc", SPLIT_SEED, "c23", None)
    cache = ensemble.make_cache(cache_dir, "dfdc", SETTINGS)
    build_face_cache(val, cache, progress=False)
    for name in ("bg", "av"):
        for seed in range(30):
            model = _student(name, seed)
            st = ensemble.Student(name, Path(), model, 1.0, "clahe_bilateral",
                                  3 if name == "av" else 1, name == "av", {})
            _, labels, probs = ensemble.score_videos(st, val, cache, SETTINGS, torch.device("cpu"))
            if chance_reason(binary_metrics(labels, probs)["auc"]) is None:
                break
        _save(ckpt, model)
    rr = _student("rr", 0, constant=True)
    _save(ckpt, rr)
    _save(ckpt, rr, name="ll")  # a checkpoint of this suite whose name no builder knows
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = ensemble.main(["fit", "--checkpoint-dir", str(ckpt), "--data", str(data),
                              "--cache-dir", str(cache_dir), *SMALL])
    return {"ckpt": ckpt, "cache_dir": cache_dir, "data": data, "code": code,
            "stdout": out.getvalue()}


def _val_video(data: Path, label: int) -> Path:
    val = validation_records(data, "dfdc", SPLIT_SEED, "c23", None)
    return Path(next(r.path for r in val if r.label == label))


def _predict(capsys, *argv) -> tuple[int, str, str]:
    code = ensemble.main(["predict", *map(str, argv), "--device", "cpu"])
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- fit

def test_fit_writes_json_png_and_table(fitted):
    ckpt, out = fitted["ckpt"], fitted["stdout"]
    assert fitted["code"] == 0, out
    assert "students found: bg, av, rr; missing: cm, tm" in out  # ll loads but is not usable
    assert "ll: present but incompatible" in out
    ens = json.loads((ckpt / "ensemble.json").read_text())
    assert [m["name"] for m in ens["models"]] == ["bg", "av", "rr"]
    assert ens["unavailable"]["cm"] == ens["unavailable"]["tm"] == "missing"
    assert ens["unavailable"]["ll"].startswith("present but incompatible")
    assert ens["threshold"] == 0.5 and ens["split"] == "val" and ens["dataset"] == "dfdc"
    assert ens["settings"] == {"image_size": 32, "frames_per_video": 2, "clip_len": 3,
                               "detector": "none", "face_model": None}
    assert (ens["n_real"], ens["n_fake"]) == (2, 2)
    for m in ens["models"]:
        assert Path(m["checkpoint"]) == ckpt / f"{m['name']}_model_student.pt"
        assert m["temperature"] == 1.0 and m["trained_val_auc"] == 0.75
    assert 0.0 <= ens["val_auc"] <= 1.0
    assert (ckpt / "ensemble_roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (ckpt / "ensemble_auc.md").read_text()
    for name in ("bg", "av", "rr", "**ensemble**"):
        assert f"| {name} |" in table
    assert "| model | val video AUC |" in out  # the table is printed too


def test_student_at_chance_gets_weight_zero(fitted):
    ens = json.loads((fitted["ckpt"] / "ensemble.json").read_text())
    by_name = {m["name"]: m for m in ens["models"]}
    rr = by_name["rr"]
    assert rr["val_auc"] == 0.5 and rr["weight"] == 0.0 and rr["used"] is False
    assert "chance" in rr["dropped_reason"]
    for name in ("bg", "av"):  # seeds chosen off chance: both are fused
        assert by_name[name]["used"] and by_name[name]["weight"] != 0.0
        assert abs(by_name[name]["val_auc"] - 0.5) >= 0.05


def test_fit_refuses_too_few_validation_videos(fitted, tmp_path, capsys):
    shutil.copy(fitted["ckpt"] / "rr_model_student.pt", tmp_path)
    code = ensemble.main(["fit", "--checkpoint-dir", str(tmp_path), "--data", str(fitted["data"]),
                          "--cache-dir", str(fitted["cache_dir"]), "--max-videos", "2", *SMALL])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: ") and "1 real and 1 fake validation videos" in err[-1]
    assert not (tmp_path / "ensemble.json").exists()


def test_combiner_weights_and_chance_rule():
    rng = np.random.default_rng(0)
    y = np.array([0] * 20 + [1] * 20)
    good = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.1, 40), 0.01, 0.99)
    flat = np.full(40, 0.5)
    fit = fit_combiner({"bg": good, "rr": flat}, y)
    assert fit["models"]["bg"]["weight"] > 0 and fit["models"]["rr"]["weight"] == 0.0
    assert fit["models"]["rr"]["dropped_reason"] and fit["val_auc"] > 0.9
    assert fit["val_auc_cv"] > 0.9
    # the stored weights reproduce the fitted probabilities through ensemble.fuse
    ens = {"intercept": fit["intercept"],
           "models": [{"name": n, **r} for n, r in fit["models"].items()]}
    fused = [ensemble.fuse({"bg": g, "rr": 0.5}, ens)[0] for g in good]
    assert np.allclose(fused, fit["fused"], atol=1e-6)
    # a used student that is absent is dropped from the sum (and reported)
    p, dropped = ensemble.fuse({"rr": 0.9}, ens)
    assert dropped == ["bg"] and p == pytest.approx(1 / (1 + math.exp(-fit["intercept"])))
    with pytest.raises(UserError, match="no student beats chance"):
        fit_combiner({"rr": flat}, y)
    with pytest.raises(UserError, match="0 real and 3 fake"):
        check_classes([1, 1, 1], "somewhere")
    assert chance_reason(math.nan) == "validation AUC undefined" and chance_reason(0.54)
    assert chance_reason(0.56) is None and chance_reason(0.3) is None


# ----------------------------------------------------------------------------- predict

def test_predict_json_audio_no_audio_and_a_bad_file(fitted, sample_root, tmp_path, capsys):
    ckpt, data = fitted["ckpt"], fitted["data"]
    dfdc_video = _val_video(data, 1)
    ff_video = next((sample_root / "faceforensics/original_sequences").rglob("*.mp4"))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    code, out, _ = _predict(capsys, dfdc_video, empty, ff_video, "--checkpoint-dir", ckpt, "--json")
    assert code == 1  # one video failed; the others are still reported
    good, bad, ff = [json.loads(line) for line in out.strip().splitlines()]
    assert bad == {"video": str(empty), "ok": False, "error": "empty file (0 bytes)"}
    assert (good["video"], ff["video"]) == (str(dfdc_video), str(ff_video))
    assert (good["audio"], ff["audio"]) == (True, False)  # AV sees audio_missing on FF++
    for r in (good, ff):
        assert r["ok"] and 0.0 <= r["fake_probability"] <= 1.0
        assert r["verdict"] == ("FAKE" if r["fake_probability"] >= 0.5 else "REAL")
        assert set(r["students"]) == {"bg", "av", "rr"} and r["missing_students"] == []
        assert all(0.0 <= s["score"] <= 1.0 for s in r["students"].values())
        assert r["students"]["rr"]["score"] == pytest.approx(0.5)
    # predict decodes the file itself; its score matches the fit-time path through the cache
    cache = ensemble.make_cache(fitted["cache_dir"], "dfdc", SETTINGS)
    rec = next(r for r in validation_records(data, "dfdc", SPLIT_SEED, "c23", None)
               if Path(r.path) == dfdc_video)
    bg = ensemble.load_student(ckpt / "bg_model_student.pt", "bg")
    _, _, probs = ensemble.score_videos(bg, [rec], cache, SETTINGS, torch.device("cpu"))
    assert good["students"]["bg"]["score"] == pytest.approx(float(probs[0]), abs=1e-4)
    # the text form of the same result lists every specialist
    text = ensemble.format_result(good)
    assert text.startswith(f"{dfdc_video}: {good['verdict']}  fused p(fake) = ")
    assert "weight 0 (validation AUC 0.500 is at chance" in text


def test_predict_text_with_a_student_missing(fitted, tmp_path, capsys):
    for f in fitted["ckpt"].iterdir():
        if not f.name.startswith("bg_"):
            shutil.copy(f, tmp_path / f.name)
    empty = tmp_path / "broken.mp4"
    empty.write_bytes(b"")
    video = _val_video(fitted["data"], 0)
    code, out, err = _predict(capsys, empty, video, "--checkpoint-dir", tmp_path)
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == f"{empty}: ERROR empty file (0 bytes)"
    assert lines[1].startswith(f"{video}: ") and "fused p(fake) = " in lines[1]
    assert "approximate: bg missing" in lines[1]
    assert [line.split()[0] for line in lines[2:]] == ["av", "rr", "bg"]
    assert lines[-1].split() == ["bg", "missing"]
    assert "bg is missing" in err and "approximation" in err


def test_predict_without_ensemble_is_a_user_error(tmp_path, capsys):
    code, _, err = _predict(capsys, tmp_path / "a.mp4", "--checkpoint-dir", tmp_path)
    assert code == 2 and "no ensemble file" in err and str(tmp_path / "ensemble.json") in err
