"""Honest bad-video accounting: missing videos are named, and the stop rule spares tiny splits."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from common.data.datasets import VideoRecord
from common.data.synthetic import face_video, write_mp4
from common.faces.cache import FaceCache
from common.faces.extraction import build_face_cache
from common.training.run_files import skip_reason, write_skipped
from common.training.stage_data import TooManyBadVideos, check_bad_fraction


@pytest.mark.parametrize("bad, total, stops", [(1, 8, False), (2, 8, False), (3, 8, True),
                                               (3, 100, False), (6, 100, True), (0, 0, False)])
def test_stop_needs_a_share_above_the_limit_and_more_than_two_videos(bad, total, stops, tmp_path):
    samples = SimpleNamespace(missing=bad)
    if stops:
        with pytest.raises(TooManyBadVideos, match=f"{bad} of {total} val videos"):
            check_bad_fraction(samples, total, 0.05, "val", tmp_path / "s.txt")
    else:
        check_bad_fraction(samples, total, 0.05, "val", tmp_path / "s.txt")


def test_a_missing_video_is_counted_marked_and_listed(tmp_path, yunet_model):
    write_mp4(tmp_path / "here.mp4", face_video(20, (160, 120), identity=0, seed=1))
    here = VideoRecord(str(tmp_path / "here.mp4"), "v/here.mp4", 0, "here", "val", False)
    gone = VideoRecord(str(tmp_path / "gone.mp4"), "v/gone.mp4", 1, "here", "val", False,
                       "v/here.mp4")
    cache = FaceCache(tmp_path / "cache", "tiny", 32, 2, 1)
    s = build_face_cache([here, gone], cache, progress=False)
    assert s["done"] == 1 and s["skipped"] == {"missing": 1}
    assert skip_reason(cache, "v/gone.mp4").startswith("missing: listed in the dataset")
    skipped = tmp_path / "x.skipped.txt"
    write_skipped(skipped, ["v/gone.mp4"], SimpleNamespace(main=True), cache)
    assert skipped.read_text().startswith("v/gone.mp4\tmissing: ")
    # remembered while absent; extracted once the file appears
    assert build_face_cache([here, gone], cache, progress=False)["skipped"] == {"missing": 1}
    write_mp4(Path(gone.path), face_video(20, (160, 120), identity=0, seed=1, swap=1))
    s = build_face_cache([here, gone], cache, progress=False)
    assert s["done"] == 1 and s["skipped"] == {} and cache.is_complete("v/gone.mp4")
