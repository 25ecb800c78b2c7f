"""The stacking ensemble: fit on the validation videos the students list, predict on files.

Students are tiny untrained models saved straight to `<m>_model_student.pt` (training them
through the stage scripts would take minutes), with the data contract a final stage writes
(`data_index`, `val_videos`). Each random student's seed is chosen so that it is not at chance
on the (4-video) validation list; RR's head is zeroed so it says 0.5 for everything and must
get weight 0; `ll` is a BG student exported with torch.jit (the external-student contract).
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

import tests.conftest as conftest
from common import evaluate
from common.data.datasets import index_dataset
from common.ensemble import command as ensemble, stacking, students
from common.ensemble.fit import check_classes
from common.ensemble.stacking import chance_reason, fit_combiner
from common.errors import UserError
from common.faces.extraction import build_face_cache
from common.model import build_student
from common.training.checkpoints import save_checkpoint
from common.training.metrics import binary_metrics

SMALL = ["--image-size", "32", "--frames-per-video", "2", "--face-detector", "none",
         "--workers", "0", "--device", "cpu", "--batch-size", "8"]
SETTINGS = students.Settings(image_size=32, frames_per_video=2, clip_len=3, detector="none")
SPLIT_SEED = 42  # the stage scripts' default seed


def val_list(data: Path) -> list:
    """The validation records a DFDC final stage over parts 0,1 would list."""
    return sorted((r for r in index_dataset("dfdc", data, parts=[0, 1], seed=SPLIT_SEED) if r.split == "val"),
                  key=lambda r: r.rel)


def contract(data: Path) -> dict:
    return {"data_index": {"dataset": "dfdc", "root": str(data), "kwargs": {"parts": [0, 1], "seed": SPLIT_SEED},
                           "max_videos": None, "cap_seed": SPLIT_SEED},
            "val_videos": [r.rel for r in val_list(data)], "stage_finished": True}


def _student(name: str, seed: int, constant: bool = False):
    torch.manual_seed(seed)
    model = build_student(name, backbone="mobilenet_v3_small", pretrained="none", clip_len=3)
    if constant:  # logits always (0, 0): p = 0.5 for every video, AUC 0.5
        torch.nn.init.zeros_(model.head[-1].weight)
        torch.nn.init.zeros_(model.head[-1].bias)
    return model.eval()


def _save(folder: Path, model, name: str | None = None, extra: dict | None = None) -> Path:
    name = name or model.name
    path = folder / f"{name}_model_student.pt"
    save_checkpoint({"model": model.state_dict(), "model_options": dict(model.options, name=name),
                     "temperature": 1.0, "metrics": {"val": {"video": {"auc": 0.75}}},
                     "stage": "stage4_dfdc", "kind": "student", **(extra or {})}, path)
    return path


def _script(model, path: Path) -> None:
    """Export a student under the external contract: uint8 [B, T, 3, S, S] in, [B, 2] out."""
    example = torch.randint(0, 256, (2, 1, 3, 32, 32), dtype=torch.uint8)
    torch.jit.save(torch.jit.trace(model, example), str(path))


def _off_chance(name: str, val, cache, first_seed: int = 0, preprocessing: str = "clahe_bilateral"):
    """The first seed whose random student is not at chance on the validation list."""
    for seed in range(first_seed, first_seed + 30):
        model = _student(name, seed)
        st = students.Student(name, Path(), model, 1.0, preprocessing,
                              3 if name == "av" else 1, name == "av", {})
        _, labels, probs = students.score_videos(st, val, cache, SETTINGS, torch.device("cpu"))
        if chance_reason(binary_metrics(labels, probs)["auc"]) is None:
            return model
    raise AssertionError(f"no seed in {first_seed}..{first_seed + 29} gives a {name} off chance")


@pytest.fixture(scope="module")
def fitted(sample_root, tmp_path_factory):
    """Checkpoint dir with bg and av (seeds off chance), rr (constant), ll (a BG student as
    TorchScript), xx (a file of this suite naming no architecture), the DFDC sample's
    validation face cache, and one `fit` run over them."""
    ckpt = tmp_path_factory.mktemp("students")
    cache_dir = tmp_path_factory.mktemp("cache")
    data = sample_root / "dfdc"
    val = val_list(data)
    cache = students.make_cache(cache_dir, "dfdc", SETTINGS)
    build_face_cache(val, cache, progress=False)
    for name in ("bg", "av"):
        _save(ckpt, _off_chance(name, val, cache), extra=contract(data))
    rr = _student("rr", 0, constant=True)
    _save(ckpt, rr, extra=contract(data))
    _save(ckpt, rr, name="xx")  # a checkpoint of this suite whose name no builder knows
    ll = _off_chance("bg", val, cache, first_seed=100, preprocessing="none")  # external: raw crops
    _script(ll, ckpt / "ll_model_student.pt")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = ensemble.main(["fit", "--checkpoint-dir", str(ckpt), "--data", str(data),
                              "--cache-dir", str(cache_dir), *SMALL])
    return {"ckpt": ckpt, "cache_dir": cache_dir, "data": data, "code": code,
            "stdout": out.getvalue(), "ll": ll}


def _val_video(data: Path, label: int) -> Path:
    return Path(next(r.path for r in val_list(data) if r.label == label))


def _predict(capsys, *argv) -> tuple[int, str, str]:
    code = ensemble.main(["predict", *map(str, argv), "--device", "cpu"])
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- fit

def test_fit_writes_json_png_and_table(fitted):
    ckpt, out = fitted["ckpt"], fitted["stdout"]
    assert fitted["code"] == 0, out
    assert "students found: bg, av, rr, ll; missing: cm, tm" in out  # xx loads but is not usable
    assert "xx: present but incompatible" in out and "not one of this suite's architectures" in out
    ens = json.loads((ckpt / "ensemble.json").read_text())
    assert [m["name"] for m in ens["models"]] == ["bg", "av", "rr", "ll"]
    assert ens["unavailable"]["cm"] == ens["unavailable"]["tm"] == "missing"
    assert ens["unavailable"]["xx"].startswith("present but incompatible")
    assert ens["threshold"] == 0.5 and ens["split"] == "val" and ens["dataset"] == "dfdc"
    assert ens["settings"] == {"image_size": 32, "frames_per_video": 2, "clip_len": 3,
                               "detector": "none", "face_model": None}
    assert (ens["n_real"], ens["n_fake"]) == (2, 2)
    for m in ens["models"]:
        assert Path(m["checkpoint"]) == ckpt / f"{m['name']}_model_student.pt"
        assert m["temperature"] == 1.0
        assert m["trained_val_auc"] == (None if m["name"] == "ll" else 0.75)
    # one combiner per non-empty subset of the useful students (bg, av, ll): 7
    assert sorted(map(tuple, (c["students"] for c in ens["combiners"]))) == sorted(
        [("bg",), ("av",), ("ll",), ("bg", "av"), ("bg", "ll"), ("av", "ll"), ("bg", "av", "ll")])
    assert {m["name"]: m["weight"] for m in ens["models"] if m["used"]} == ens["combiners"][-1]["weights"]
    # every listed video was one the students selected on, and none is fresh: no headline figure;
    # the out-of-fold figure over them is reported, as optimistic, never the in-sample one
    assert ens["headline_auc"] is None and "val_auc" not in ens
    assert ens["selection_videos"] == {"n": 4, "n_fake": 2} and ens["fresh_videos"] == {"n": 0, "n_fake": 0, "videos": []}
    assert isinstance(ens["val_auc_oof"], float)
    assert (ckpt / "ensemble_roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (ckpt / "ensemble_auc.md").read_text()
    for name in ("bg", "av", "rr", "ll", "**ensemble (headline)**", "ensemble, out-of-fold, all videos"):
        assert f"| {name} |" in table
    assert "- 4 (2 real, 2 fake) from the students' `val_videos`" in table
    assert "- 0 (0 real, 0 fake) fresh" in table and "no fresh videos of both classes" in table
    assert "out-of-fold: each video scored by a combiner not fit on it" in table
    assert "| model | val video AUC |" in out  # the table is printed too


def test_student_at_chance_gets_weight_zero(fitted):
    ens = json.loads((fitted["ckpt"] / "ensemble.json").read_text())
    by_name = {m["name"]: m for m in ens["models"]}
    rr = by_name["rr"]
    assert rr["val_auc"] == 0.5 and rr["weight"] == 0.0 and rr["used"] is False
    assert "chance" in rr["dropped_reason"]
    for name in ("bg", "av", "ll"):  # seeds chosen off chance: all are fused
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
    assert fit["models"]["rr"]["dropped_reason"] and fit["val_auc_in_sample"] > 0.9
    assert fit["val_auc_oof"] > 0.9
    assert [c["students"] for c in fit["combiners"]] == [["bg"]]  # rr is in no combiner
    # the stored weights reproduce the fitted probabilities through students.fuse
    ens = {"intercept": fit["intercept"], "combiners": fit["combiners"],
           "models": [{"name": n, **r} for n, r in fit["models"].items()]}
    fused = [students.fuse({"bg": g, "rr": 0.5}, ens)[0] for g in good]
    assert np.allclose(fused, fit["fused"], atol=1e-6)
    with pytest.raises(UserError, match="none of the students the ensemble relies on"):
        students.fuse({"rr": 0.9}, ens)
    with pytest.raises(UserError, match="no student beats chance"):
        fit_combiner({"rr": flat}, y)
    with pytest.raises(UserError, match="0 real and 3 fake"):
        check_classes([1, 1, 1], "somewhere")
    assert chance_reason(math.nan) == "validation AUC undefined" and chance_reason(0.54)
    assert chance_reason(0.56) is None and chance_reason(0.3) is None


def test_a_missing_student_means_the_combiner_fit_without_it():
    rng = np.random.default_rng(1)
    y = np.array([0] * 30 + [1] * 30)
    a = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.15, 60), 0.01, 0.99)
    b = np.clip(0.2 + 0.4 * y + rng.normal(0, 0.2, 60), 0.01, 0.99)
    fit = fit_combiner({"bg": a, "cm": b}, y)
    ens = {"intercept": fit["intercept"], "combiners": fit["combiners"],
           "models": [{"name": n, **r} for n, r in fit["models"].items()]}
    only_a = fit_combiner({"bg": a}, y)  # what a refit without cm gives
    for p in (0.2, 0.7):
        got, missing = students.fuse({"bg": p}, ens)
        want = 1 / (1 + math.exp(-(only_a["intercept"] + only_a["models"]["bg"]["weight"] * students.logit(p))))
        assert missing == ["cm"] and got == pytest.approx(float(want), abs=1e-9)
        # ...which is not what dropping cm's term from the two-student sum would say
        full = fit["combiners"][-1]
        dropped = 1 / (1 + math.exp(-(full["intercept"] + full["weights"]["bg"] * students.logit(p))))
        assert abs(got - float(dropped)) > 0.01


def test_headline_is_out_of_fold_not_in_sample():
    # Three students of pure noise that pass the chance rule by luck: fitting and scoring on
    # the same videos flatters them; the out-of-fold figure does not.
    rng = np.random.default_rng(7)
    y = np.array([0] * 20 + [1] * 20)
    noise = {n: rng.uniform(0.05, 0.95, 40) for n in ("bg", "cm", "rr", "tm", "av")}
    fit = fit_combiner(noise, y)
    used = [n for n, r in fit["models"].items() if r["used"]]
    assert len(used) >= 2
    assert len(fit["combiners"]) == 2 ** len(used) - 1
    assert fit["val_auc_oof"] < fit["val_auc_in_sample"] - 0.05


# ----------------------------------------------------------------------------- predict

def test_predict_json_audio_no_audio_and_a_bad_file(fitted, sample_root, tmp_path, capsys):
    ckpt, data = fitted["ckpt"], fitted["data"]
    dfdc_video = _val_video(data, 1)
    ff_video = next((sample_root / "faceforensics/original_sequences").rglob("*.mp4"))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    code, out, _ = _predict(capsys, dfdc_video, empty, ff_video, "--checkpoint-dir", ckpt, "--json")
    ens = json.loads((ckpt / "ensemble.json").read_text())
    assert code == 1  # one video failed; the others are still reported
    good, bad, ff = [json.loads(line) for line in out.strip().splitlines()]
    assert bad == {"video": str(empty), "ok": False, "error": "empty file (0 bytes)"}
    assert (good["video"], ff["video"]) == (str(dfdc_video), str(ff_video))
    assert (good["audio"], ff["audio"]) == (True, False)  # AV sees audio_missing on FF++
    for r in (good, ff):
        assert r["ok"] and r["verdict"] == ("FAKE" if r["fake_probability"] >= 0.5 else "REAL")
        assert set(r["students"]) == {"bg", "av", "rr", "ll"} and r["missing_students"] == []
        assert r["students"]["rr"]["score"] == pytest.approx(0.5)
        assert r["students"]["rr"]["used"] is False and "at chance" in r["students"]["rr"]["reason"]
        assert all(r["students"][n]["used"] is True and "reason" not in r["students"][n] for n in ("bg", "ll"))
    # with audio: the (bg, av, ll) combiner on the students' own scores
    assert sorted(good["combiner"]) == ["av", "bg", "ll"] and good["students"]["av"]["used"] is True
    want, _ = students.fuse({n: s["score"] for n, s in good["students"].items()}, ens)
    assert good["fake_probability"] == pytest.approx(want, abs=1e-12)
    # without audio AV is not used, and the fused score is the combiner fit without AV
    av = ff["students"]["av"]
    assert av["used"] is False and av["reason"] == students.NO_AUDIO and av["weight"] == 0.0
    assert sorted(ff["combiner"]) == ["bg", "ll"] and ff["left_out"] == ["av"]
    def z(names):  # the fused logit of the combiner fit on exactly these students
        c = next(c for c in ens["combiners"] if sorted(c["students"]) == names)
        return c["intercept"] + sum(w * float(students.logit(ff["students"][n]["score"]))
                                    for n, w in c["weights"].items())

    p = ff["fake_probability"]  # compared as logits: four videos fit steep combiners
    assert math.log(p) - math.log1p(-p) == pytest.approx(z(["bg", "ll"]), rel=1e-6, abs=1e-9)
    assert abs(z(["av", "bg", "ll"]) - z(["bg", "ll"])) > 0.01  # what fusing AV's silence would say
    # predict decodes the file itself; its score matches the fit-time path through the cache
    cache = students.make_cache(fitted["cache_dir"], "dfdc", SETTINGS)
    rec = next(r for r in val_list(data) if Path(r.path) == dfdc_video)
    bg = students.load_student(ckpt / "bg_model_student.pt", "bg")
    _, _, probs = students.score_videos(bg, [rec], cache, SETTINGS, torch.device("cpu"))
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
    assert "combiner fit without bg" in lines[1]
    assert [line.split()[0] for line in lines[2:]] == ["av", "rr", "ll", "bg"]
    assert lines[-1].split() == ["bg", "missing"]
    assert "bg is missing" in err and "the combiner fit without it is used" in err
    # the fused score is the (av, ll) combiner's, and av's weight line shows that combiner's weight
    ens = json.loads((tmp_path / "ensemble.json").read_text())
    c = next(c for c in ens["combiners"] if sorted(c["students"]) == ["av", "ll"])
    assert f"weight {c['weights']['av']:+.3f}" in lines[2]


def test_predict_without_ensemble_is_a_user_error(tmp_path, capsys):
    code, _, err = _predict(capsys, tmp_path / "a.mp4", "--checkpoint-dir", tmp_path)
    assert code == 2 and "no ensemble file" in err and str(tmp_path / "ensemble.json") in err


# ----------------------------------------------------------------------------- external students

def test_torchscript_student_scores_like_the_model_it_was_exported_from(fitted):
    ll = students.load_student(fitted["ckpt"] / "ll_model_student.pt", "ll")
    assert ll.external and ll.clip_len == 1 and ll.temperature == 1.0 and ll.preprocessing == "none"
    cache = students.make_cache(fitted["cache_dir"], "dfdc", SETTINGS)
    val = val_list(fitted["data"])
    original = students.Student("bg", Path(), fitted["ll"], 1.0, "none", 1, False, {})
    ids, _, want = students.score_videos(original, val, cache, SETTINGS, torch.device("cpu"))
    got_ids, _, got = students.score_videos(ll, val, cache, SETTINGS, torch.device("cpu"))
    assert got_ids == ids and np.allclose(got, want, atol=1e-5)


class _ThreeLogits(torch.nn.Module):
    def forward(self, frames):
        return frames.float().mean(dim=(1, 2, 3, 4)).unsqueeze(1).repeat(1, 3)


def test_anything_else_is_named_and_skipped(fitted, tmp_path, capsys):
    for f in ("bg_model_student.pt", "av_model_student.pt", "rr_model_student.pt"):
        shutil.copy(fitted["ckpt"] / f, tmp_path / f)
    example = torch.zeros(1, 1, 3, 32, 32, dtype=torch.uint8)
    torch.jit.save(torch.jit.trace(_ThreeLogits(), example), str(tmp_path / "ll_model_student.pt"))
    (tmp_path / "odd_model_student.pt").write_bytes(b"not a model")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = ensemble.main(["fit", "--checkpoint-dir", str(tmp_path), "--data", str(fitted["data"]),
                              "--cache-dir", str(fitted["cache_dir"]), *SMALL])
    text = out.getvalue()
    assert code == 0, text
    assert "ll: present but incompatible" in text and "the contract is float logits [B, 2]" in text
    assert "odd: present but incompatible" in text and "not a readable checkpoint" in text
    ens = json.loads((tmp_path / "ensemble.json").read_text())
    assert [m["name"] for m in ens["models"]] == ["bg", "av", "rr"]
    assert set(ens["unavailable"]) >= {"ll", "odd", "cm", "tm"}


def test_fit_reads_the_checkpoints_list_and_refuses_students_without_one(fitted, tmp_path, capsys):
    # bg's list is cut to two videos (one real, one fake): the fit must use exactly those
    ck = tmp_path / "ck"
    ck.mkdir()
    val = val_list(fitted["data"])
    keep = [next(r.rel for r in val if r.label == 0), next(r.rel for r in val if r.label == 1)]
    _save(ck, _student("rr", 0, constant=True), name="rr", extra=dict(contract(fitted["data"]), val_videos=keep))
    code = ensemble.main(["fit", "--checkpoint-dir", str(ck), "--data", str(fitted["data"]),
                          "--cache-dir", str(fitted["cache_dir"]), *SMALL])
    err = capsys.readouterr().err
    assert code == 2 and "1 real and 1 fake validation videos" in err
    _save(ck, _student("rr", 0, constant=True), name="rr")  # no data contract at all
    code = ensemble.main(["fit", "--checkpoint-dir", str(ck), "--data", str(fitted["data"]),
                          "--cache-dir", str(fitted["cache_dir"]), *SMALL])
    assert code == 2 and "no student records its validation videos" in capsys.readouterr().err


def test_predict_crops_only_the_views_its_students_read():
    """A CM-only ensemble crops the native view alone (tests/test_face_path.py checks that its
    scores still equal validation's); a student without a recorded view reads face crops."""
    from types import SimpleNamespace

    from common.ensemble.students import views_needed

    def st(view):
        return SimpleNamespace(checkpoint={"faces": {"view": view}} if view else {})

    assert views_needed({"cm": st("native")}) == ("native",)
    assert views_needed({"bg": st("context"), "rr": st("face"), "ext": st(None)}) == ("face", "context")
    assert views_needed({m: st(v) for m, v in [("bg", "context"), ("cm", "native"), ("tm", "face")]}) \
        == ("face", "context", "native")


# ----------------------------------------------------------------------------- honest stacking

def test_fit_takes_its_headline_on_fresh_videos_with_grouped_folds(fitted, tmp_path):
    """Students whose recorded split (val_fraction 0.5) holds 8 validation videos but who list 4
    of them (as a --max-videos cap would): the other 4 are fresh, and the headline is theirs."""
    data = fitted["data"]
    for name in ("bg", "av"):
        st = students.load_student(fitted["ckpt"] / f"{name}_model_student.pt", name)
        extra = contract(data)
        extra["data_index"]["kwargs"]["val_fraction"] = 0.5
        _save(tmp_path, st.model, name, extra=extra)
    with contextlib.redirect_stdout(io.StringIO()):
        assert ensemble.main(["fit", "--checkpoint-dir", str(tmp_path), "--data", str(data),
                              "--cache-dir", str(fitted["cache_dir"]), *SMALL]) == 0
    ens = json.loads((tmp_path / "ensemble.json").read_text())
    split = {r.rel: r for r in index_dataset("dfdc", data, parts=[0, 1], seed=SPLIT_SEED, val_fraction=0.5)
             if r.split == "val"}
    listed = {r.rel for r in val_list(data)}
    assert len(split) == 8 and listed < set(split)
    assert ens["fresh_videos"]["videos"] == sorted(set(split) - listed)
    assert ens["selection_videos"] == {"n": 4, "n_fake": 2} and ens["n_videos"] == 8
    assert ens["fresh_videos"]["n"] == 4 and ens["fresh_videos"]["n_fake"] == 2
    # a DFDC original and its fakes are one group: 4 groups of 2, so 4 folds, never split
    groups = [split[v].group for v in sorted(split)]
    y = np.array([split[v].label for v in sorted(split)])
    assert len(set(groups)) == 4 and len(stacking.folds(y, groups)) == 4
    assert isinstance(ens["headline_auc"], float)
    md = (tmp_path / "ensemble_auc.md").read_text()
    assert "- 4 (2 real, 2 fake) fresh" in md and "**The headline is taken on these alone.**" in md
    assert f"| **ensemble (headline)** | **{ens['headline_auc']:.3f}** | 4 |" in md


def test_evaluate_leaves_av_out_of_the_fusion_on_videos_without_audio(fitted, sample_root, tmp_path, capsys):
    """Celeb-DF has no audio: the ensemble's score of every test video is the combiner fit
    without AV, though AV itself is still scored (its own row)."""
    code = evaluate.main(["--checkpoint-dir", str(fitted["ckpt"]), "--cache-dir", str(fitted["cache_dir"]),
                          *SMALL, "--dataset", "celebdf", "--data", str(sample_root / "celebdf"),
                          "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    rows = json.loads((tmp_path / "evaluation.json").read_text())["rows"]
    ens = json.loads((fitted["ckpt"] / "ensemble.json").read_text())
    assert rows["ensemble"]["combiners_used"] == {"bg, ll": 5} and len(rows["av"]["video_scores"]) == 5
    no_av = next(c for c in ens["combiners"] if sorted(c["students"]) == ["bg", "ll"])
    for vid, s in rows["ensemble"]["video_scores"].items():
        z = no_av["intercept"] + sum(w * float(students.logit(rows[n]["video_scores"][vid]["score"]))
                                     for n, w in no_av["weights"].items())
        assert math.log(s["score"]) - math.log1p(-s["score"]) == pytest.approx(z, rel=1e-4, abs=1e-4)


REAL_DATA, NO_REAL_DATA = conftest.realdata_dir()  # $DEEPFAKE_REALDATA_DIR, as the other real-footage tests


@pytest.mark.skipif(REAL_DATA is None, reason=NO_REAL_DATA or "")
def test_predict_json_on_a_real_ffpp_video_without_audio(fitted, capsys):
    video = REAL_DATA / "ffpp/manipulated_sequences/NeuralTextures/c23/videos/004_982.mp4"
    code, out, _ = _predict(capsys, video, "--checkpoint-dir", fitted["ckpt"], "--json")
    assert code == 0
    res = json.loads(out)  # JSON Lines: one object on its line
    assert res["ok"] and res["audio"] is False
    assert res["students"]["av"]["used"] is False and res["students"]["av"]["reason"] == students.NO_AUDIO
    assert res["students"]["bg"]["used"] is True and sorted(res["combiner"]) == ["bg", "ll"]


def test_fit_scores_av_only_on_videos_with_audio(fitted, monkeypatch):
    """A validation video whose audio failed: AV gets no score on it (NaN), the others do."""
    from types import SimpleNamespace

    from common.ensemble.fit import score_pool
    from common.faces.cache import FaceCache

    val = val_list(fitted["data"])
    cache = students.make_cache(fitted["cache_dir"], "dfdc", SETTINGS)
    deaf = val[1].rel
    real_meta = FaceCache.meta

    def meta(self, rel, source=None):
        m = real_meta(self, rel, source)
        return dict(m, audio={"present": False, "reason": "audio track failed to decode"}) if rel == deaf else m

    monkeypatch.setattr(FaceCache, "meta", meta)
    team = {n: students.load_student(fitted["ckpt"] / f"{n}_model_student.pt", n) for n in ("bg", "av")}
    args = SimpleNamespace(device="cpu", batch_size=8, workers=0)
    records, labels, scores = score_pool(team, val, cache, SETTINGS, args)
    assert [r.rel for r in records] == sorted(r.rel for r in val)
    i = [r.rel for r in records].index(deaf)
    assert math.isnan(scores["av"][i]) and np.isfinite(np.delete(scores["av"], i)).all()
    assert np.isfinite(scores["bg"]).all()
