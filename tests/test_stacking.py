"""common.ensemble.stacking: grouped folds, the chance rule inside them, the headline on fresh
videos only, and students that cannot see a video (NaN scores: AV without audio)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from common.ensemble import stacking, students


def _pool(n_groups: int = 12, seed: int = 0):
    """DFDC-like groups: one real and two fakes per original, student scores that rank."""
    rng = np.random.default_rng(seed)
    y = np.array([0, 1, 1] * n_groups)
    groups = np.repeat([f"orig{g}" for g in range(n_groups)], 3)
    good = np.clip(0.3 + 0.35 * y + rng.normal(0, 0.12, len(y)), 0.01, 0.99)
    other = np.clip(0.35 + 0.25 * y + rng.normal(0, 0.15, len(y)), 0.01, 0.99)
    return y, groups, {"bg": good, "cm": other}


def test_folds_keep_every_group_whole_and_both_classes_in_each():
    y, groups, _ = _pool()
    splits = stacking.folds(y, groups)
    assert len(splits) == stacking.MAX_FOLDS
    tested = np.concatenate([test for _, test in splits])
    assert sorted(tested.tolist()) == list(range(len(y)))  # each video in exactly one test fold
    for train, test in splits:
        assert not set(groups[train]) & set(groups[test])  # no original on both sides
        assert set(y[test].tolist()) == {0, 1}
    # two groups per class are the fewest that still make folds; one is none
    assert len(stacking.folds(np.array([0, 1, 0, 1]), ["a", "a", "b", "b"])) == 2
    assert stacking.folds(np.array([0, 1, 1]), ["a", "a", "a"]) == []


def test_out_of_fold_figure_uses_the_grouped_folds():
    y, groups, scores = _pool()
    fit = stacking.fit_combiner(scores, y, groups=groups)
    want = np.full(len(y), np.nan)
    for train, test in stacking.folds(y, groups):
        tr = {n: p[train] for n, p in scores.items()}
        want[test] = stacking.deployed_scores(scores, tr, y[train], test, ["bg", "cm"])
    np.testing.assert_allclose(fit["fused_oof"], want)
    assert fit["val_auc_oof"] == pytest.approx(stacking.auc(y, want))


def test_chance_rule_is_applied_inside_each_fold(monkeypatch):
    y, groups, scores = _pool()
    seen = []
    real_useful = stacking.useful

    def spy(s, labels):
        seen.append(len(labels))
        return real_useful(s, labels)

    monkeypatch.setattr(stacking, "useful", spy)
    stacking.fit_combiner(scores, y, groups=groups)
    # once per fold, on that fold's training videos only (never on all of them)
    assert len(seen) == stacking.MAX_FOLDS and all(n < len(y) for n in seen)
    assert sum(len(y) - n for n in seen) == len(y)


def test_headline_is_taken_on_fresh_videos_only():
    # On the videos the students were selected on they look perfect (selection bias); on the
    # fresh ones they are merely good. The headline must be the fresh figure.
    y, groups, scores = _pool(n_groups=16, seed=3)
    fresh = np.zeros(len(y), bool)
    fresh[24:] = True  # the last 8 originals: 24 videos
    noisy = np.random.default_rng(4).normal(0, 0.2, len(y))
    biased = {n: np.where(fresh, np.clip(p + noisy, 0.01, 0.99), np.where(y == 1, 0.9, 0.1))
              for n, p in scores.items()}
    fit = stacking.fit_combiner(biased, y, groups=groups, fresh=fresh)
    assert fit["headline_auc"] == pytest.approx(stacking.auc(y[fresh], fit["fused_oof"][fresh]))
    assert fit["headline_auc"] < fit["val_auc_oof"] - 0.02
    assert stacking.fit_combiner(biased, y, groups=groups)["headline_auc"] is None  # no fresh videos


def test_a_student_blind_on_a_video_is_left_out_of_its_fusion():
    # AV scores NaN where there is no audio: its combiners are fit on the videos with audio, and
    # a video without audio is scored by the combiner fit without AV.
    y, groups, scores = _pool(n_groups=16, seed=5)
    av = np.clip(0.2 + 0.6 * y + np.random.default_rng(9).normal(0, 0.1, len(y)), 0.01, 0.99)
    no_audio = np.arange(len(y)) % 4 == 0
    scores["av"] = np.where(no_audio, np.nan, av)
    fit = stacking.fit_combiner(scores, y, groups=groups)
    assert fit["models"]["av"]["n_seen"] == int((~no_audio).sum()) and fit["models"]["av"]["used"]
    ens = {"combiners": fit["combiners"], "models": [{"name": n, **r} for n, r in fit["models"].items()]}
    no_av = students.combiner_for(ens, ["bg", "cm"])
    for i in np.flatnonzero(no_audio)[:5]:
        fused, _ = students.fuse({"bg": scores["bg"][i], "cm": scores["cm"][i]}, ens)
        z = no_av["intercept"] + sum(w * float(students.logit(scores[n][i])) for n, w in no_av["weights"].items())
        assert fit["fused"][i] == pytest.approx(fused, abs=1e-9) == pytest.approx(1 / (1 + math.exp(-z)))
    # the AV combiners never saw a video without audio: refit on the others alone, they agree
    with_av = students.combiner_for(ens, ["bg", "cm", "av"])
    alone = stacking.fit_one({n: p[~no_audio] for n, p in scores.items()}, with_av["students"], y[~no_audio])
    assert alone["weights"] == pytest.approx(with_av["weights"]) and alone["intercept"] == pytest.approx(with_av["intercept"])
