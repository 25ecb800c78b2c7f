"""Indexers over tiny placeholder trees (empty .mp4 files: indexers never decode video)."""
import json
import logging
from pathlib import Path

import pytest

from common.data.datasets import (IndexReport, VideoRecord, index_celebdf, index_dataset, index_dfdc,
                                  index_faceforensics, part_dirs, summarize)
from common.errors import DatasetLayoutError, UserError


def touch(root: Path, *rels: str) -> None:
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def by_rel(records):
    return {r.rel: r for r in records}


def splits_of_groups(records, splits=("train", "val", "test")):
    out = {}
    for r in records:
        if r.split in splits:
            out.setdefault(r.group, set()).add(r.split)
    return out


# ---------------------------------------------------------------- FaceForensics++
FF_PAIRS = [["000", "001"], ["002", "003"], ["004", "005"], ["006", "007"], ["008", "009"]]


def make_ff(root: Path, pairs=FF_PAIRS, methods=("Deepfakes", "Face2Face"), comp="c23",
            splits=True) -> Path:
    for a, b in pairs:
        touch(root, f"original_sequences/youtube/{comp}/videos/{a}.mp4",
              f"original_sequences/youtube/{comp}/videos/{b}.mp4")
        for m in methods:
            for t, s in ((a, b), (b, a)):
                touch(root, f"manipulated_sequences/{m}/{comp}/videos/{t}_{s}.mp4",
                      f"manipulated_sequences/{m}/masks/videos/{t}_{s}.mp4")
    if splits:
        (root / "splits").mkdir()
        for name, chosen in (("train", pairs[:3]), ("val", pairs[3:4]), ("test", pairs[4:])):
            (root / "splits" / f"{name}.json").write_text(json.dumps(chosen))
    return root


def test_ff_official_splits(tmp_path):
    records = index_faceforensics(make_ff(tmp_path))
    assert len(records) == 10 + 2 * 10  # masks are not videos to train on
    recs = by_rel(records)
    real = recs["original_sequences/youtube/c23/videos/006.mp4"]
    assert (real.label, real.split, real.source, real.group) == (0, "val", None, "006_007")
    fake = recs["manipulated_sequences/Face2Face/c23/videos/009_008.mp4"]
    assert (fake.label, fake.split, fake.group) == (1, "test", "008_009")
    assert fake.source == "original_sequences/youtube/c23/videos/009.mp4"
    assert Path(fake.path).is_absolute() and Path(fake.path).is_file()
    assert not fake.has_audio and fake.chunk is None
    assert all(len(s) == 1 for s in splits_of_groups(records).values())
    assert summarize(records) == {"total": 30, "train": {"real": 6, "fake": 12},
                                  "val": {"real": 2, "fake": 4}, "test": {"real": 2, "fake": 4}}


def test_ff_splits_dir_flag_and_unlisted_ids_skipped(tmp_path, caplog):
    root = make_ff(tmp_path / "ff", splits=False)
    sdir = tmp_path / "my_splits"
    sdir.mkdir()
    for name, chosen in (("train", FF_PAIRS[:2]), ("val", FF_PAIRS[2:3]), ("test", FF_PAIRS[3:4])):
        (sdir / f"{name}.json").write_text(json.dumps(chosen))
    report = IndexReport()
    with caplog.at_level(logging.WARNING, logger="common.data.datasets"):
        records = index_faceforensics(root, splits_dir=sdir, report=report)
    assert report.n_skipped == 6  # pair 008/009: 2 originals + 2 fakes x 2 methods
    assert summarize(records, report)["skipped"] == 6
    assert not any(r.rel.endswith(("008.mp4", "009.mp4", "008_009.mp4")) for r in records)
    assert "not listed in the split files" in caplog.text


def test_ff_fallback_split_is_logged_deterministic_and_leak_free(tmp_path, caplog):
    pairs = [[f"{2 * i:03d}", f"{2 * i + 1:03d}"] for i in range(10)]
    root = make_ff(tmp_path, pairs=pairs, splits=False)
    touch(root, "manipulated_sequences/Deepfakes/c23/videos/000_019.mp4")  # links two pairs
    with caplog.at_level(logging.WARNING, logger="common.data.datasets"):
        records = index_faceforensics(root)
    assert "official split files not found" in caplog.text
    assert [r.split for r in records] == [r.split for r in index_faceforensics(root)]
    split_of_id = {Path(r.rel).stem: r.split for r in records if r.label == 0}
    for r in records:
        if r.label:
            t, s = Path(r.rel).stem.split("_")
            assert split_of_id[t] == split_of_id[s] == r.split, r.rel
    assert split_of_id["000"] == split_of_id["019"]
    assert all(len(s) == 1 for s in splits_of_groups(records).values())
    counts = summarize(records)
    assert all(counts[s]["real"] and counts[s]["fake"] for s in ("train", "val", "test"))


def test_ff_missing_compression_names_path_and_found(tmp_path):
    make_ff(tmp_path, comp="c40")
    with pytest.raises(DatasetLayoutError) as e:
        index_faceforensics(tmp_path)
    msg = str(e.value)
    assert "original_sequences/youtube/c23/videos" in msg and "c40" in msg and "\n" not in msg
    assert len(index_faceforensics(tmp_path, compression="c40")) == 30


def test_ff_methods_present_on_disk_only(tmp_path, caplog):
    make_ff(tmp_path, methods=("Deepfakes",))
    with caplog.at_level(logging.WARNING, logger="common.data.datasets"):
        records = index_faceforensics(tmp_path, methods=("Deepfakes", "FaceShifter"))
    assert "FaceShifter" in caplog.text
    assert sum(r.label for r in records) == 10
    with pytest.raises(DatasetLayoutError, match="FaceShifter"):
        index_faceforensics(tmp_path, methods=("FaceShifter",))


def test_ff_bad_split_file(tmp_path):
    make_ff(tmp_path)
    (tmp_path / "splits" / "val.json").write_text('[["006", 7]]')
    with pytest.raises(DatasetLayoutError, match="val.json"):
        index_faceforensics(tmp_path)
    with pytest.raises(DatasetLayoutError, match="test.json"):
        index_faceforensics(tmp_path, splits_dir=tmp_path / "nowhere")


def test_ff_deepfakedetection_is_opt_in(tmp_path):
    make_ff(tmp_path)
    touch(tmp_path, *(f"original_sequences/actors/c23/videos/{a:02d}__walking_outside.mp4"
                      for a in range(1, 8)),
          *(f"manipulated_sequences/DeepFakeDetection/c23/videos/{a:02d}_{a + 1:02d}"
            f"__walking_outside__AB12CD34.mp4" for a in range(1, 8)))
    assert len(index_faceforensics(tmp_path)) == 30
    records = [r for r in index_faceforensics(tmp_path, include_dfd=True) if "actors" in r.rel
               or "DeepFakeDetection" in r.rel]
    assert len(records) == 14 and sum(r.label for r in records) == 7
    fake = by_rel(records)["manipulated_sequences/DeepFakeDetection/c23/videos/"
                           "03_04__walking_outside__AB12CD34.mp4"]
    assert fake.group == "actor03"
    assert fake.source == "original_sequences/actors/c23/videos/03__walking_outside.mp4"
    assert all(len(s) == 1 for s in splits_of_groups(records).values())


# ---------------------------------------------------------------- Celeb-DF
def make_celebdf(root: Path, n_ids=8, test_lines=None, links=None) -> Path:
    """Ids in swap pairs (0,1), (2,3), ...; two clips each; four YouTube reals."""
    links = links or [(a, a ^ 1) for a in range(n_ids)]
    for a in range(n_ids):
        touch(root, *(f"Celeb-real/id{a}_{c:04d}.mp4" for c in range(2)))
    for a, b in links:
        touch(root, *(f"Celeb-synthesis/id{a}_id{b}_{c:04d}.mp4" for c in range(2)))
    touch(root, *(f"YouTube-real/{k:05d}.mp4" for k in range(4)))
    if test_lines is None:
        test_lines = ["1 Celeb-real/id6_0000.mp4", "0 Celeb-synthesis/id6_id7_0000.mp4",
                      "", "1 YouTube-real/00003.mp4", "1 Celeb-real/id7_0000.mp4",
                      "0 Celeb-synthesis/id7_id6_0000.mp4"]
    # Windows line ends, a blank line, and no newline after the last entry
    (root / "List_of_testing_videos.txt").write_bytes("\r\n".join(test_lines).encode())
    return root


def assert_no_identity_leak(records):
    ids = {"train": set(), "val": set()}
    for r in records:
        if r.split in ids:
            ids[r.split].update(t for t in Path(r.rel).stem.split("_") if t.startswith("id"))
    assert not ids["train"] & ids["val"]
    assert all(len(s) == 1 for s in splits_of_groups(records, ("train", "val")).values())


def test_celebdf_labels_test_list_and_grouped_val(tmp_path):
    records = index_celebdf(make_celebdf(tmp_path))
    recs = by_rel(records)
    assert len(records) == 16 + 4 + 16
    assert (recs["Celeb-real/id6_0000.mp4"].label, recs["Celeb-real/id6_0000.mp4"].split) == (0, "test")
    assert (recs["Celeb-synthesis/id7_id6_0000.mp4"].label,
            recs["Celeb-synthesis/id7_id6_0000.mp4"].split) == (1, "test")
    assert recs["YouTube-real/00003.mp4"].split == "test"
    assert {r.rel for r in records if r.split == "test"} == {
        "Celeb-real/id6_0000.mp4", "Celeb-synthesis/id6_id7_0000.mp4", "YouTube-real/00003.mp4",
        "Celeb-real/id7_0000.mp4", "Celeb-synthesis/id7_id6_0000.mp4"}
    fake = recs["Celeb-synthesis/id2_id3_0001.mp4"]
    assert (fake.group, fake.source) == ("id2", "Celeb-real/id2_0001.mp4")
    assert recs["YouTube-real/00001.mp4"].group == "yt00001"
    assert not any(r.has_audio for r in records)
    counts = summarize(records)
    assert all(counts[s]["real"] and counts[s]["fake"] for s in ("train", "val", "test"))
    assert counts["val"]["real"] + counts["val"]["fake"] < counts["train"]["real"] + counts["train"]["fake"]
    assert_no_identity_leak(records)
    assert records == index_celebdf(tmp_path)


def test_celebdf_first_line_is_an_entry_and_one_means_real(tmp_path):
    make_celebdf(tmp_path, test_lines=["1 Celeb-real/id0_0000.mp4"])
    rec = by_rel(index_celebdf(tmp_path))["Celeb-real/id0_0000.mp4"]
    assert (rec.label, rec.split) == (0, "test")


@pytest.mark.parametrize("bad", ["2 Celeb-real/id0_0001.mp4", "1 Celeb-real/id0_0001.mp4 extra",
                                 "Celeb-real/id0_0001.mp4", "1 Other/id0_0001.mp4",
                                 "1 Celeb-synthesis/id0_id1_0001.mp4"])
def test_celebdf_bad_test_line_names_file_and_line(tmp_path, bad):
    make_celebdf(tmp_path, test_lines=["1 Celeb-real/id0_0000.mp4", "", bad])
    with pytest.raises(DatasetLayoutError, match=r"List_of_testing_videos.txt:3"):
        index_celebdf(tmp_path)


def test_celebdf_without_test_list(tmp_path, caplog):
    make_celebdf(tmp_path)
    (tmp_path / "List_of_testing_videos.txt").unlink()
    with caplog.at_level(logging.WARNING, logger="common.data.datasets"):
        records = index_celebdf(tmp_path)
    assert "List_of_testing_videos.txt" in caplog.text
    assert not [r for r in records if r.split == "test"] and len(records) == 36


def test_celebdf_linked_identities_never_straddle_train_and_val(tmp_path):
    n = 12
    links = [(a, (a + 1) % n) for a in range(n)] + [(a, (a + 5) % n) for a in range(n)]
    make_celebdf(tmp_path, n_ids=n, test_lines=["1 Celeb-real/id0_0000.mp4"], links=links)
    report = IndexReport()
    records = index_celebdf(tmp_path, val_fraction=0.2, seed=3, report=report)
    assert_no_identity_leak(records)
    assert report.n_skipped > 0  # one big component: fakes across the cut are dropped
    assert all("straddle" in why for _, why in report.skipped)
    assert len(records) + report.n_skipped == 2 * n + 4 + 2 * len(links)
    counts = summarize(records)
    assert counts["val"]["real"] and counts["val"]["fake"] and counts["train"]["fake"]


# ---------------------------------------------------------------- DFDC
def make_dfdc(root: Path) -> Path:
    parts = {0: root / "dfdc_train_part_0", 1: root / "dfdc_train_part_01" / "dfdc_train_part_1"}
    for k, folder in parts.items():
        meta = {}
        for o in range(4):
            real = f"real{k}{o}abcd.mp4"
            meta[real] = {"label": "REAL", "split": "train"} if o % 2 else \
                {"label": "REAL", "split": "train", "original": None}
            for f in range(2):
                meta[f"fake{k}{o}{f}abc.mp4"] = {"label": "FAKE", "split": "train", "original": real}
        folder.mkdir(parents=True)
        (folder / "metadata.json").write_text(json.dumps(meta))
        touch(folder, *meta)
    return root


def test_dfdc_nested_parts_groups_and_val(tmp_path):
    make_dfdc(tmp_path)
    assert {k: p.relative_to(tmp_path).as_posix() for k, p in part_dirs(tmp_path).items()} == {
        0: "dfdc_train_part_0", 1: "dfdc_train_part_01/dfdc_train_part_1"}
    records = index_dfdc(tmp_path)
    assert len(records) == 24
    recs = by_rel(records)
    fake = recs["dfdc_train_part_01/dfdc_train_part_1/fake121abc.mp4"]
    assert (fake.label, fake.chunk, fake.group, fake.has_audio) == (1, 1, "real12abcd.mp4", True)
    assert fake.source == "dfdc_train_part_01/dfdc_train_part_1/real12abcd.mp4"
    real = recs["dfdc_train_part_0/real03abcd.mp4"]
    assert (real.label, real.chunk, real.group, real.source) == (0, 0, "real03abcd.mp4", None)
    assert all(len(s) == 1 for s in splits_of_groups(records).values())
    for k in (0, 1):
        val = [r for r in records if r.chunk == k and r.split == "val"]
        assert {r.label for r in val} == {0, 1} and len(val) < 12
    assert records == index_dfdc(tmp_path) and [r.chunk for r in index_dfdc(tmp_path, parts=[1])] == [1] * 12


def test_dfdc_missing_and_unlisted_files_are_counted_and_skipped(tmp_path, caplog):
    make_dfdc(tmp_path)
    (tmp_path / "dfdc_train_part_0" / "fake000abc.mp4").unlink()
    touch(tmp_path, "dfdc_train_part_0/strangerxy.mp4")
    report = IndexReport()
    with caplog.at_level(logging.WARNING, logger="common.data.datasets"):
        records = index_dfdc(tmp_path, report=report)
    assert report.n_skipped == 2 and "strangerxy.mp4" in caplog.text and "fake000abc.mp4" in caplog.text
    assert {Path(p).name for p, _ in report.skipped} == {"strangerxy.mp4", "fake000abc.mp4"}
    # the listed-but-missing video stays a record (extraction marks it `missing`); the
    # unlisted one is not part of the dataset
    assert len(records) == 24 and "strangerxy.mp4" not in {Path(r.path).name for r in records}
    gone = [r for r in records if not Path(r.path).exists()]
    assert [Path(r.path).name for r in gone] == ["fake000abc.mp4"] and gone[0].label == 1


def test_ff_split_ids_without_a_file_are_missing_records(tmp_path):
    root = make_ff(tmp_path)
    (root / "original_sequences/youtube/c23/videos/006.mp4").unlink()  # a val id's original
    (root / "manipulated_sequences/Deepfakes/c23/videos/000_001.mp4").unlink()
    report = IndexReport()
    records = index_faceforensics(root, report=report)
    assert len(records) == 10 + 2 * 10  # every listed video is a record, present or not
    gone = {r.rel: r for r in records if not Path(r.path).exists()}
    assert sorted(gone) == ["manipulated_sequences/Deepfakes/c23/videos/000_001.mp4",
                            "original_sequences/youtube/c23/videos/006.mp4"]
    real, fake = gone["original_sequences/youtube/c23/videos/006.mp4"], \
        gone["manipulated_sequences/Deepfakes/c23/videos/000_001.mp4"]
    assert (real.label, real.split, fake.label, fake.split) == (0, "val", 1, "train")
    assert fake.source == "original_sequences/youtube/c23/videos/000.mp4"  # its target's real
    assert report.n_skipped == 2 and all("missing on disk" in why for _, why in report.skipped)


@pytest.mark.parametrize("text", ["{not json", '["a.mp4"]', '{"a.mp4": {"label": "MAYBE"}}'])
def test_dfdc_bad_metadata_names_the_file(tmp_path, text):
    make_dfdc(tmp_path)
    meta = tmp_path / "dfdc_train_part_01" / "dfdc_train_part_1" / "metadata.json"
    meta.write_text(text)
    with pytest.raises(DatasetLayoutError, match="dfdc_train_part_1/metadata.json"):
        index_dfdc(tmp_path)
    assert len(index_dfdc(tmp_path, parts=[0])) == 12  # the other part alone is fine


def test_dfdc_unknown_part(tmp_path):
    make_dfdc(tmp_path)
    with pytest.raises(DatasetLayoutError, match=r"dfdc_train_part_7 .*parts found: 0, 1"):
        index_dfdc(tmp_path, parts=[7])


# ---------------------------------------------------------------- roots
@pytest.mark.parametrize("name", ["faceforensics", "celebdf", "dfdc"])
def test_wrong_root_is_one_line_layout_error(tmp_path, name):
    (tmp_path / "a_file.mp4").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    for root, words in ((tmp_path / "missing", "does not exist"), (tmp_path / "a_file.mp4", "is a file"),
                        (tmp_path / "empty", "expected")):
        with pytest.raises(DatasetLayoutError) as e:
            index_dataset(name, root)
        assert str(root) in str(e.value) and words in str(e.value) and "\n" not in str(e.value)
        assert isinstance(e.value, UserError)


def test_wrong_layout_says_what_it_looks_like(tmp_path):
    make_celebdf(tmp_path)
    with pytest.raises(DatasetLayoutError, match="original_sequences/.*looks like a celebdf root"):
        index_dataset("faceforensics", tmp_path)
    with pytest.raises(DatasetLayoutError, match="unknown dataset"):
        index_dataset("imagenet", tmp_path)
    assert isinstance(index_dataset("celebdf", tmp_path, seed=1)[0], VideoRecord)


def test_celebdf_non_strict_keeps_every_fake_split_by_target(tmp_path):
    n = 12
    links = [(a, (a + 1) % n) for a in range(n)]
    make_celebdf(tmp_path, n_ids=n, test_lines=["1 Celeb-real/id0_0000.mp4"], links=links)
    report = IndexReport()
    records = index_celebdf(tmp_path, val_fraction=0.2, strict_identities=False, report=report)
    assert report.n_skipped == 0 and len(records) == 2 * n + 4 + 2 * n
    assert all(len(s) == 1 for s in splits_of_groups(records, ("train", "val")).values())


def test_dfdc_root_pointing_at_one_part(tmp_path):
    make_dfdc(tmp_path)
    with pytest.raises(DatasetLayoutError, match="this is one part"):
        index_dfdc(tmp_path / "dfdc_train_part_0")
