"""How stages validate: DFDC on whole held-out parts (or a grouped split, with a warning), a
single-class validation split refused, and the record of every stage a checkpoint passed through."""
import logging
from types import SimpleNamespace

import pytest

from common.cli import EXIT_USER_ERROR, run_stage
from common.errors import UserError
from common.recipes import RECIPES
from common.training import stage_data as sd
from common.training.held_out import lineage_before, lineage_of

DFDC = RECIPES["stage4_dfdc"]


def _cfg(chunks, val_parts=None, data="dfdc"):
    return SimpleNamespace(chunks=chunks, val_parts=val_parts, data=data, seed=42, max_videos=None)


def test_dfdc_validates_on_the_first_part_outside_the_training_order(caplog):
    with caplog.at_level(logging.WARNING):
        assert sd.dfdc_val_parts(_cfg((9, 8)), DFDC, {8: None, 9: None, 12: None, 11: None}) == (11,)
    assert not caplog.records
    assert sd.dfdc_val_parts(_cfg((9, 8), (12,)), DFDC, {8: None, 9: None, 11: None, 12: None}) == (12,)
    with pytest.raises(UserError, match="--val-parts 8 also in the training order"):
        sd.dfdc_val_parts(_cfg((9, 8), (8,)), DFDC, {8: None, 9: None})
    with pytest.raises(UserError, match="no dfdc_train_part_13"):
        sd.dfdc_val_parts(_cfg((9, 8), (13,)), DFDC, {8: None, 9: None})


def test_without_a_spare_part_the_grouped_split_stays_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert sd.dfdc_val_parts(_cfg((0, 1)), DFDC, {0: None, 1: None}) == ()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "the same actors may be on both sides" in lines[0]


def test_held_out_part_is_the_whole_validation_split_and_is_recorded(sample_root):
    cfg = _cfg((0,), (1,), data=sample_root / "dfdc")
    index = sd.index_arguments(cfg, DFDC)
    assert index["kwargs"]["val_parts"] == [1] and index["validation"] == "held-out part 1"
    records = sd.stage_records(index)
    assert {r.chunk for r in records if r.split == "val"} == {1}
    assert {r.chunk for r in records if r.split == "train"} == {0}
    assert len([r for r in records if r.chunk == 1]) == 7  # every video of part 1
    grouped = sd.index_arguments(_cfg((0, 1), (), data=sample_root / "dfdc"), DFDC)
    assert grouped["validation"] == "grouped by original (identities may cross)"
    assert {r.split for r in sd.stage_records(grouped)} == {"train", "val"}


def test_a_single_class_validation_split_is_an_error_naming_it(sample_root, tmp_path, capsys):
    # --max-videos 1 leaves one (fake) video in FF++'s validation split
    code = run_stage("bg", "stage1_faceforensics", [
        "--data", str(sample_root / "faceforensics"), "--checkpoint-dir", str(tmp_path / "ck"),
        "--cache-dir", str(tmp_path / "cache"), "--backbone", "mobilenet_v3_small", "--pretrained", "none",
        "--image-size", "32", "--frames-per-video", "2", "--max-videos", "1", "--workers", "0",
        "--device", "cpu", "--no-status"])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR
    assert "the validation split of stage1_faceforensics has only fake videos" in err
    assert not (tmp_path / "ck" / "bg_stage1_faceforensics.pt").exists()


def _stage(name, val):
    return {"stage": name, "data_index": {"dataset": "x", "root": "/r"}, "val_videos": val}


def test_lineage_follows_the_weights():
    s1 = dict(_stage("stage1_faceforensics", ["a"]), lineage_before=[])
    s1["lineage"] = lineage_of(s1)
    assert [e["stage"] for e in s1["lineage"]] == ["stage1_faceforensics"]
    # stage 2 from stage 1's checkpoint inherits its lineage; a resumed run keeps what it recorded
    before = lineage_before("previous", s1)
    last = dict(_stage("stage2_celebdf", ["b"]), lineage_before=before)
    assert lineage_before("resume", last) == before
    assert [e["stage"] for e in lineage_of(last)] == ["stage1_faceforensics", "stage2_celebdf"]
    assert lineage_of(last)[0]["val_videos"] == ["a"]
    assert lineage_before("scratch", None) == []
