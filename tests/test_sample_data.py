"""The synthetic trees: they index cleanly, decode, carry audio where DFDC does, and show
faces that the project's own Haar detector (common.faces.detectors.make_detector("haar")) finds in
every video, with fakes that differ inside the face."""
import json
from pathlib import Path

import av
import numpy as np
import pytest

from common.data import synthetic as sd
from common.data.datasets import IndexReport, index_celebdf, index_dfdc, index_faceforensics, summarize
from common.errors import UserError
from common.faces.detectors import largest_face, make_detector


@pytest.fixture(scope="session")
def trees(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    written = sd.make_all(out, seed=0)
    return out, written


def decode(path: Path) -> tuple[np.ndarray, tuple | None]:
    """All frames as RGB [N,H,W,3], and (codec, rate, channels) of the audio track or None."""
    with av.open(str(path)) as box:
        audio = box.streams.audio[0] if box.streams.audio else None
        info = None if audio is None else (audio.codec_context.name, audio.rate, audio.channels)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in box.decode(video=0)])
    return frames, info


@pytest.fixture(scope="module")
def haar():
    return make_detector("haar")  # what the face cache runs: minNeighbors 5, min size 20


def both_classes_everywhere(records, splits):
    counts = summarize(records)
    return all(counts[s]["real"] and counts[s]["fake"] for s in splits), counts


def test_trees_index_cleanly_with_both_classes_per_split(trees):
    out, written = trees
    for name, (records, splits) in {
        "faceforensics": (index_faceforensics(out / "faceforensics", methods=sd.FF_METHODS,
                                              report=(rep_ff := IndexReport())), ("train", "val", "test")),
        "celebdf": (index_celebdf(out / "celebdf", report=(rep_cdf := IndexReport())),
                    ("train", "val", "test")),
        "dfdc": (index_dfdc(out / "dfdc", parts=[0, 1], report=(rep_dfdc := IndexReport())),
                 ("train", "val")),
    }.items():
        ok, counts = both_classes_everywhere(records, splits)
        assert ok, (name, counts)
        assert len(records) == len(written[name]), name
        fakes = sum(r.label for r in records)
        assert 0.9 <= fakes / (len(records) - fakes) <= 2, (name, counts)  # modest imbalance
    assert rep_ff.n_skipped == rep_cdf.n_skipped == rep_dfdc.n_skipped == 0
    assert sum(len(paths) for paths in written.values()) <= 80
    assert not list(out.rglob("*.part"))


def test_videos_decode_to_the_written_size_and_length(trees):
    out, written = trees
    frames, audio = decode(written["faceforensics"][0])
    assert frames.shape == (24, 120, 160, 3) and audio is None
    frames, audio = decode(out / "celebdf" / "Celeb-synthesis" / "id0_id1_0000.mp4")
    assert frames.shape == (24, 120, 160, 3) and audio is None
    for path in written["dfdc"]:
        frames, audio = decode(path)
        assert frames.shape[0] == 30 and sorted(frames.shape[1:3]) == [108, 192]
        assert audio == ("aac", 44100, 2)
    nested = [p for p in written["dfdc"] if "dfdc_train_part_01/dfdc_train_part_1" in p.as_posix()]
    assert nested and decode(nested[0])[0].shape[1:3] == (192, 108)  # one portrait original


def test_haar_finds_the_face_in_most_frames_of_every_video(trees, haar):
    out, written = trees
    rates = {}
    for path in (p for paths in written.values() for p in paths):
        frames = decode(path)[0][::3]  # every 3rd frame: 8-10 per video
        rates[path.relative_to(out).as_posix()] = np.mean(
            [len(haar.detect(f)) > 0 for f in frames])
    assert len(rates) == sum(len(paths) for paths in written.values())
    missed = {name: round(rate, 2) for name, rate in rates.items() if rate < 0.8}
    assert not missed, missed


def test_reals_and_fakes_show_the_face_at_the_same_place(trees, haar):
    out, _ = trees
    ff = out / "faceforensics"
    pairs = [(ff / "original_sequences/youtube/c23/videos/002.mp4",
              ff / "manipulated_sequences/Deepfakes/c23/videos/002_003.mp4"),
             (ff / "original_sequences/youtube/c23/videos/009.mp4",
              ff / "manipulated_sequences/FaceSwap/c23/videos/009_008.mp4"),
             (out / "celebdf/Celeb-real/id3_0001.mp4", out / "celebdf/Celeb-synthesis/id3_id2_0001.mp4")]
    for part in (0, 1):  # landscape, and portrait (part 1's first original)
        dfdc_records = index_dfdc(out / "dfdc", parts=[part])
        fake = next(r for r in dfdc_records if r.label)
        pairs.append((out / "dfdc" / fake.source, Path(fake.path)))
    for real_path, fake_path in pairs:
        real, fake = decode(real_path)[0][12], decode(fake_path)[0][12]
        found_real, found_fake = largest_face(haar.detect(real)), largest_face(haar.detect(fake))
        assert found_real and found_fake, (real_path, fake_path)
        x, y, x1, y1 = (int(round(v)) for v in found_real)
        w, h = x1 - x, y1 - y
        fx, fy = found_fake[:2]
        assert abs(x - fx) < w / 4 and abs(y - fy) < h / 4  # fake keeps the original's motion
        # the manipulation lives inside the face box
        diff = np.abs(real.astype(np.int16) - fake.astype(np.int16)).mean(axis=2)
        inside = diff[y:y + h, x:x + w].mean()
        outside = np.concatenate([diff[:, : max(x - 4, 1)].ravel(), diff[:, x + w + 4:].ravel()]).mean()
        assert inside > 4 * outside and inside > 5, (real_path, inside, outside)


def test_identities_look_different():
    """Each identity has its own skin and hair colours: the inner faces of two identities
    differ, at the same place, by much more than the coding noise."""
    heads = [sd._head(i, 72, False)[0] for i in range(12)]
    inner = sd._crop_mask(72, 0, *sd._INNER, feather=3)
    skin = np.array([(h * inner).sum((0, 1)) / inner.sum() for h in heads])
    whole = np.array([h.reshape(-1, 3) for h in heads])
    for a in range(12):
        for b in range(a + 1, 12):
            assert np.abs(whole[a] - whole[b]).mean() > 5, (a, b)
    assert np.ptp(skin, axis=0).max() > 30  # skin tones spread out


def test_face_video_is_deterministic_and_fakes_follow_their_original():
    real = sd.face_video(6, (96, 72), identity=3, seed=5)
    assert real.shape == (6, 72, 96, 3) and real.dtype == np.uint8
    assert np.array_equal(real, sd.face_video(6, (96, 72), identity=3, seed=5))
    assert not np.array_equal(real[0], real[-1])  # it moves
    fake = sd.face_video(6, (96, 72), identity=3, seed=5, swap=4)
    diff = np.abs(real.astype(np.int16) - fake).mean(axis=(0, 3))
    assert diff[:8].mean() < 1.0 and diff[:, :8].mean() < 1.0  # borders: same background
    assert diff.max() > 20


def test_write_mp4_checks_input_and_leaves_no_partial_file(tmp_path):
    frames = np.zeros((3, 31, 40, 3), np.uint8)
    with pytest.raises(ValueError, match="even"):
        sd.write_mp4(tmp_path / "odd.mp4", frames)
    with pytest.raises(ValueError, match="uint8"):
        sd.write_mp4(tmp_path / "float.mp4", frames.astype(np.float32))
    assert list(tmp_path.iterdir()) == []
    tone = np.sin(np.linspace(0, 200, 44100 // 5)).astype(np.float32) * 0.3
    sd.write_mp4(tmp_path / "mono.mp4", np.zeros((5, 32, 48, 3), np.uint8), fps=25, audio=tone)
    frames, audio = decode(tmp_path / "mono.mp4")
    assert frames.shape == (5, 32, 48, 3) and audio == ("aac", 44100, 1)
    assert [p.name for p in tmp_path.iterdir()] == ["mono.mp4"]


def test_cli_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "faceforensics").mkdir()
    (tmp_path / "faceforensics" / "mine.txt").write_text("keep me")
    assert sd.main([str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(UserError):
        sd.make_faceforensics(tmp_path / "faceforensics")
    assert (tmp_path / "faceforensics" / "mine.txt").read_text() == "keep me"


def test_a_third_dfdc_part_is_plain_and_indexes_with_the_others(tmp_path):
    """The demo and smoke sizes hold DFDC part 2 out of training, for common.evaluate."""
    written = sd.make_dfdc(tmp_path, n_originals=2, n_frames=4, size=(96, 54), n_parts=3)
    assert (tmp_path / "dfdc_train_part_2" / "metadata.json").is_file()
    records = index_dfdc(tmp_path, parts=[0, 1, 2], val_fraction=0)
    assert len(records) == len(written) == 3 * (2 + 3)
    for part in (0, 1, 2):
        labels = [r.label for r in records if r.chunk == part]
        assert (labels.count(0), labels.count(1)) == (2, 3), part


def test_faceforensics_split_sizes_follow_the_arguments(tmp_path):
    sd.make_faceforensics(tmp_path / "ff", n_pairs=4, n_frames=2, size=(96, 72), n_val_pairs=1, n_test_pairs=2)
    splits = {s: json.loads((tmp_path / "ff" / "splits" / f"{s}.json").read_text()) for s in ("train", "val", "test")}
    assert splits == {"train": [["000", "001"]], "val": [["002", "003"]],
                      "test": [["004", "005"], ["006", "007"]]}
    with pytest.raises(ValueError, match="train"):
        sd.make_faceforensics(tmp_path / "none", n_pairs=2, n_val_pairs=1, n_test_pairs=1)


def test_tint_strengthens_the_seam_inside_the_face_only():
    real = sd.face_video(3, (96, 72), identity=3, seed=5).astype(np.int16)
    seams = []
    for tint in (1.0, 2.5):
        fake = sd.face_video(3, (96, 72), identity=3, seed=5, swap=4, tint=tint).astype(np.int16)
        diff = np.abs(real - fake).mean(axis=(0, 3))
        assert diff[:8].mean() < 1.0 and diff[:, :8].mean() < 1.0  # borders: same background
        seams.append(diff.mean())
    assert seams[1] > 1.5 * seams[0]


def test_sizes_are_checked(tmp_path, capsys):
    with pytest.raises(UserError, match="unknown sample size"):
        sd.make_all(tmp_path, size="huge")
    with pytest.raises(SystemExit):
        sd.main([str(tmp_path), "--size", "huge"])
    assert "invalid choice" in capsys.readouterr().err
    assert set(sd.SIZES) == {"tiny", "smoke", "demo"}
    assert sd.SIZES["demo"]["dfdc"]["n_parts"] == sd.SIZES["smoke"]["dfdc"]["n_parts"] == 3
