"""The Celeb-DF validation identities: few fakes lost to the identity split, counted exactly."""
import logging
import random
import re
from pathlib import Path

import pytest

from common.data.datasets import MAX_DROPPED_FAKES, IndexReport, index_celebdf, summarize


def celebdf_shaped(root: Path, seed: int, n_ids: int = 59, sources: int = 6, clips: int = 16) -> Path:
    """59 celebrities with 10 real clips each; every target swapped with 6 random sources
    (16 clips each: ~5.7k fakes, Celeb-DF v2's size); 300 YouTube reals; a small test list."""
    rng = random.Random(seed)
    names = [f"Celeb-real/id{a}_{c:04d}.mp4" for a in range(n_ids) for c in range(10)]
    for a in range(n_ids):
        for b in rng.sample([x for x in range(n_ids) if x != a], sources):
            names += [f"Celeb-synthesis/id{a}_id{b}_{c:04d}.mp4" for c in range(clips)]
    names += [f"YouTube-real/{k:05d}.mp4" for k in range(300)]
    for d in ("Celeb-real", "Celeb-synthesis", "YouTube-real"):
        (root / d).mkdir(parents=True)
    for n in names:
        (root / n).touch()
    fake = next(n for n in names if n.startswith("Celeb-synthesis/"))
    (root / "List_of_testing_videos.txt").write_text(f"1 Celeb-real/id3_0000.mp4\n0 {fake}\n")
    return root


@pytest.mark.parametrize("seed", [0, 1])
def test_celebdf_shaped_graph_drops_at_most_ten_percent_of_fakes(tmp_path, caplog, seed):
    root = celebdf_shaped(tmp_path, seed)
    report = IndexReport()
    with caplog.at_level(logging.INFO, logger="common.data.datasets"):
        records = index_celebdf(root, val_fraction=0.1, seed=42, report=report)
    dropped = [p for p, why in report.skipped if "straddle" in why]
    fakes_outside_test = sum(1 for r in records if r.label == 1 and r.split != "test") + len(dropped)
    assert len(dropped) <= MAX_DROPPED_FAKES * fakes_outside_test
    # the exact count is logged, not just the first 20 skips
    m = re.search(r"(\d+) of (\d+) fakes outside the test list dropped", caplog.text)
    assert m and (int(m.group(1)), int(m.group(2))) == (len(dropped), fakes_outside_test)
    counts = summarize(records)
    assert counts["val"]["real"] >= 30 and counts["val"]["fake"] >= 50
    # no identity on both sides
    sides = {"train": set(), "val": set()}
    for r in records:
        if r.split in sides:
            sides[r.split].update(re.findall(r"id\d+", Path(r.rel).stem))
    assert sides["val"] and not sides["train"] & sides["val"]


def test_validation_holds_both_classes_even_when_the_limit_cannot_be_met(tmp_path, caplog):
    # A ring where every identity links to four others: any held-out set loses > 10%.
    n = 12
    (tmp_path / "Celeb-real").mkdir()
    (tmp_path / "Celeb-synthesis").mkdir()
    for a in range(n):
        (tmp_path / f"Celeb-real/id{a}_0000.mp4").touch()
        for b in ((a + 1) % n, (a + 5) % n):
            (tmp_path / f"Celeb-synthesis/id{a}_id{b}_0000.mp4").touch()
    report = IndexReport()
    with caplog.at_level(logging.INFO, logger="common.data.datasets"):
        records = index_celebdf(tmp_path, val_fraction=0.2, report=report)
    counts = summarize(records)
    assert counts["val"]["real"] and counts["val"]["fake"] and counts["train"]["fake"]
    assert "limit 10%" in caplog.text and any(r.levelname == "WARNING" and "dropped" in r.message
                                               for r in caplog.records)
    # the smallest cut a linked pair can have here: its two ids' 8 links minus the 2 between them
    assert report.n_skipped == 6
