import random

import numpy as np
import pytest
import torch

from common.errors import CheckpointError
from common.training.checkpoints import (FORMAT_VERSION, atomic_write, capture_rng, load_checkpoint, restore_rng,
                                         save_checkpoint, stage_paths)


def _ckpt(name="rr"):
    return {"model": {"w": torch.ones(2)}, "model_options": {"name": name}}


def test_stage_paths_follow_the_naming_scheme(tmp_path):
    p = stage_paths(tmp_path, "rr", "stage1_faceforensics")
    assert p.best.name == "rr_stage1_faceforensics.pt"
    assert p.last.name == "rr_stage1_faceforensics_last.pt"
    assert p.metrics.name == "rr_stage1_faceforensics.metrics.jsonl"
    assert p.student.name == "rr_model_student.pt"


def test_round_trip_and_stamps(tmp_path):
    save_checkpoint(_ckpt(), tmp_path / "a.pt")
    ck = load_checkpoint(tmp_path / "a.pt", "rr")
    assert ck["format"] == FORMAT_VERSION and ck["versions"]["torch"] == str(torch.__version__)
    assert torch.equal(ck["model"]["w"], torch.ones(2))


def test_wrong_model_newer_format_and_garbage_are_clear_errors(tmp_path):
    save_checkpoint(_ckpt("cm"), tmp_path / "cm.pt")
    with pytest.raises(CheckpointError, match="CM model, not RR"):
        load_checkpoint(tmp_path / "cm.pt", "rr")
    torch.save(dict(_ckpt(), format=FORMAT_VERSION + 1), tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="newer version"):
        load_checkpoint(tmp_path / "new.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"some": "dict"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint written by this"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "x.pt"
    save_checkpoint(_ckpt(), target)
    before = target.read_bytes()

    def disk_full(f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(CheckpointError, match="No space left"):
        atomic_write(target, disk_full)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]  # no temp file left behind


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    save_checkpoint(dict(_ckpt(), rng=capture_rng()), tmp_path / "r.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    restore_rng(load_checkpoint(tmp_path / "r.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_only_a_finished_stage_is_a_starting_point(tmp_path):
    from common.training.stage_start import check_finished

    path = tmp_path / "bg_stage1_faceforensics.pt"
    check_finished({"stage_finished": True}, path)  # no error
    cases = {"stopped before its last epoch": {"stage_finished": False},
             "does not record that its stage finished": {},
             "every epoch collapsed": {"stage_finished": False, "stage_failed": "every epoch collapsed"}}
    for why, ckpt in cases.items():
        with pytest.raises(CheckpointError) as err:
            check_finished(ckpt, path)
        message = str(err.value)
        assert why in message and f"--init {path}" in message and "\n" not in message
