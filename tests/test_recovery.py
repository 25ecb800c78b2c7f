"""Every fault of a stage run ends in one line and a way back: a failure in epoch 1, a dead
DataLoader worker, --resume with a flag that would change the run, an unreadable checkpoint,
an interrupted --overwrite of the final stage, a full disk in `ensemble fit` and `evaluate`.

The stage is test_reliability's tiny BG stage 1 (its `straight` run is the reference)."""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
from pathlib import Path

import pytest

from common.cli import EXIT_INTERRUPTED, EXIT_TRAINING_FAILED, EXIT_USER_ERROR, run_stage
from common.errors import CheckpointWriteError
from common.training.checkpoints import load_checkpoint
from tests import test_evaluate, test_reliability
from tests.test_evaluate import EVAL
from tests.test_reliability import (MODEL, SMALL, STAGE, assert_same_weights, message, metric_lines, one_line,
                                    paths_of, stage_args)

# The fixtures this file shares: the reference run and its switch-off of the collapse rule
# (test_reliability), the students and the ensemble of test_evaluate.
ff, straight = test_reliability.ff, test_reliability.straight
untrained_students_are_not_collapsed = test_reliability.untrained_students_are_not_collapsed
setup = test_evaluate.setup


# ----------------------------------------------------------------------------- F1: epoch 1

def test_a_failure_in_epoch_1_is_resumed_by_restarting_the_stage(ff, straight, tmp_path, monkeypatch, capsys,
                                                                  caplog):
    """The disk fills while epoch 1's _last.pt is written (its best checkpoint made it): the
    stage exits 3 with no _last.pt to continue from. --resume then says in one line that the
    stage restarts from its start, and does: the same weights as an uninterrupted run, and
    the failure line stays in the metrics file."""
    import common.training.checkpoints as ck_mod

    real, calls = ck_mod.atomic_write, {"n": 0}

    def disk_full_on_the_second_write(path, write, mode="wb"):
        calls["n"] += 1
        if calls["n"] == 2:
            raise CheckpointWriteError(f"cannot write {path}: No space left on device")
        return real(path, write, mode)

    monkeypatch.setattr(ck_mod, "atomic_write", disk_full_on_the_second_write)
    args = stage_args(ff, tmp_path, cache=straight / "cache")
    assert run_stage(MODEL, STAGE, args) == EXIT_TRAINING_FAILED
    monkeypatch.undo()
    capsys.readouterr()
    paths = paths_of(tmp_path)
    assert paths.best.exists() and not paths.last.exists()
    assert [list(x) for x in metric_lines(tmp_path)] == [["failed", "time"]]

    # Without --resume: what to do, in one line, and nothing touched.
    assert run_stage(MODEL, STAGE, args) == EXIT_USER_ERROR
    line = one_line(capsys.readouterr().err)
    assert "pass --resume to restart the stage from its start" in line and "--overwrite" in line

    assert run_stage(MODEL, STAGE, args + ["--resume"]) == 0
    warned = [r.getMessage() for r in caplog.records if "restarts from its start" in r.getMessage()]
    assert len(warned) == 1 and str(paths.last) in warned[0]
    lines = metric_lines(tmp_path)
    assert "failed" in lines[0] and "restart" in lines[1]
    assert [x["epoch"] for x in lines if "epoch" in x] == [1, 2] and "final" in lines[-1]
    assert_same_weights(paths.best, paths_of(straight).best)
    assert_same_weights(paths.last, paths_of(straight).last)


# ----------------------------------------------------------------------------- F2: dead worker

def test_a_killed_dataloader_worker_exits_3_and_resume_continues(ff, straight, tmp_path, monkeypatch, capsys):
    """The training loader's worker SIGKILLs itself on its fifth sample (the first of the
    second batch), once the first step is done: one line naming it, exit 3, _last.pt at that
    step; --resume ends with the weights of an uninterrupted run."""
    import time

    from torch.utils.data import get_worker_info

    import common.training.stage as stage_mod
    from common.data.samples import FaceSamples

    real, count, stepped = FaceSamples._item, {"n": 0}, tmp_path / "stepped"
    real_epoch = stage_mod.train_one_epoch

    def dies_in_a_worker(self, i, out=None):
        if get_worker_info() is not None:  # only in the worker process (forked: its own count)
            count["n"] += 1
            if count["n"] == 5:
                deadline = time.time() + 120
                while not stepped.exists() and time.time() < deadline:
                    time.sleep(0.05)
                os.kill(os.getpid(), signal.SIGKILL)
        return real(self, i)

    def epoch_that_tells(*a, on_step, **k):
        def step(batches):
            on_step(batches)
            stepped.touch()
        return real_epoch(*a, on_step=step, **k)

    monkeypatch.setattr(stage_mod, "train_one_epoch", epoch_that_tells)
    monkeypatch.setattr(FaceSamples, "_item", dies_in_a_worker)  # every sample, batched or not
    args = stage_args(ff, tmp_path, "--workers", "1", cache=straight / "cache")
    assert run_stage(MODEL, STAGE, args) == EXIT_TRAINING_FAILED
    monkeypatch.undo()
    line = message(capsys.readouterr().err)
    assert line.startswith("training failed: DataLoader worker (pid")  # torch's words: "(pid(s) N) exited
    assert ("killed by signal" in line or "exited unexpectedly" in line) and "--workers" in line  # unexpectedly"
    paths = paths_of(tmp_path)
    assert f"state saved to {paths.last}" in line and line.endswith("--resume")
    last = load_checkpoint(paths.last, MODEL)
    assert last["position"]["phase"] == 0 and last["position"]["batches_done"] == 1

    assert run_stage(MODEL, STAGE, args + ["--resume"]) == 0
    assert [x["epoch"] for x in metric_lines(tmp_path) if "epoch" in x] == [1, 2]
    assert_same_weights(paths.last, paths_of(straight).last)


# ----------------------------------------------------------------------------- F4: resume flags

@pytest.mark.parametrize("flag, value", [("--seed", "7"), ("--face-detector", "haar"), ("--max-videos", "3"),
                                         ("--compression", "c40"), ("--splits", "SPLITS")])
def test_resume_refuses_a_flag_that_changes_the_splits_or_the_crops(ff, straight, tmp_path, capsys, flag, value):
    shutil.copytree(straight / "ck", tmp_path / "ck")
    value = str(ff / "splits") if value == "SPLITS" else value
    code = run_stage(MODEL, STAGE, stage_args(ff, tmp_path, "--resume", flag, value, cache=straight / "cache"))
    assert code == EXIT_USER_ERROR
    line = message(capsys.readouterr().err)
    assert line.startswith(f"error: --resume with {flag} ") and "--overwrite" in line
    assert flag in line.split("was trained with")[1]


def test_the_face_model_is_compared_by_content(tmp_path):
    """--face-model by sha256: a copy elsewhere is the same model, another file is not; DFDC
    parts are compared in order."""
    from common.cli import parse_config
    from common.errors import UserError
    from common.training.run_guard import RESUME_FIXED, check_resume_flags, run_flags

    model = tmp_path / "a.onnx"
    model.write_bytes(b"yunet weights")
    copy = tmp_path / "elsewhere" / "b.onnx"
    copy.parent.mkdir()
    copy.write_bytes(model.read_bytes())
    other = tmp_path / "c.onnx"
    other.write_bytes(b"other weights")

    def flags(path: Path, chunks: str = "0,1", val_parts: str = "5") -> dict:
        return run_flags(parse_config("bg", "stage4_dfdc", ["--data", "x", "--face-detector", "yunet",
                                                            "--face-model", str(path), "--chunks", chunks,
                                                            "--val-parts", val_parts]))

    recorded = flags(model)
    assert set(recorded) == set(RESUME_FIXED) and len(RESUME_FIXED) == 12
    assert recorded["face_model"] == "sha256:" + hashlib.sha256(b"yunet weights").hexdigest()
    check_resume_flags(flags(copy), recorded, Path("last.pt"))  # same content: accepted
    with pytest.raises(UserError, match="--resume with --face-model sha256:"):
        check_resume_flags(flags(other), recorded, Path("last.pt"))
    with pytest.raises(UserError, match="--resume with --chunks 1,0, but last.pt was trained with --chunks 0,1"):
        check_resume_flags(flags(model, "1,0"), recorded, Path("last.pt"))
    with pytest.raises(UserError, match="--resume with --val-parts 6, but last.pt was trained with --val-parts 5"):
        check_resume_flags(flags(model, val_parts="6"), recorded, Path("last.pt"))


# ----------------------------------------------------------------------------- 10. checkpoints and disk

def test_status_marks_a_truncated_checkpoint_and_exits_non_zero(straight, tmp_path, capsys):
    from common.training import progress

    ck = tmp_path / "ck"
    shutil.copytree(straight / "ck", ck)
    assert progress.main(["--checkpoint-dir", str(ck)]) == 0
    capsys.readouterr()
    best = paths_of(tmp_path).best
    data = best.read_bytes()
    best.write_bytes(data[:len(data) // 2])  # a copy cut short, a disk that filled under another tool
    assert progress.main(["--checkpoint-dir", str(ck)]) == 1
    out, err = capsys.readouterr()
    assert f"| BG | {STAGE} | unreadable: {best.name} |" in out
    assert err.strip() == f"attention: BG {STAGE} is unreadable: {best.name}"


def test_an_interrupted_overwrite_of_the_final_stage_removes_the_old_student(sample_root, straight, tmp_path,
                                                                             monkeypatch):
    import common.training.stage as stage_mod

    final = paths_of(tmp_path, stage="stage4_dfdc")
    final.best.parent.mkdir(parents=True)
    for old in (final.best, final.student):  # a finished stage 4 of an earlier run
        shutil.copy(paths_of(straight).best, old)
    real_epoch = stage_mod.train_one_epoch

    def epoch_then_sigterm(*a, on_step, **k):
        def step(batches):
            on_step(batches)
            os.kill(os.getpid(), signal.SIGTERM)
        return real_epoch(*a, on_step=step, **k)

    monkeypatch.setattr(stage_mod, "train_one_epoch", epoch_then_sigterm)
    args = ["--data", str(sample_root / "dfdc"), "--checkpoint-dir", str(tmp_path / "ck"),
            "--cache-dir", str(straight / "cache"), *SMALL, "--init",
            str(paths_of(straight).best), "--chunks", "0", "--epochs", "1", "--overwrite"]
    assert run_stage(MODEL, "stage4_dfdc", args) == EXIT_INTERRUPTED
    assert not final.student.exists() and not final.best.exists()  # predict finds no stale student
    assert load_checkpoint(final.last, MODEL)["position"]["batches_done"] == 1


@pytest.mark.parametrize("command", ["fit", "evaluate"])
def test_a_full_disk_in_ensemble_fit_or_evaluate_exits_3(setup, tmp_path, monkeypatch, capsys, command):
    from common import evaluate
    from common.ensemble import command as ensemble
    from tests.test_ensemble import SMALL

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("common.data.atomic.os.fsync", disk_full)
    if command == "fit":
        code = ensemble.main(["fit", "--checkpoint-dir", str(setup["ckpt"]), "--data", str(setup["root"] / "dfdc"),
                              "--cache-dir", str(setup["cache"]), "--out", str(tmp_path), *SMALL])
    else:
        code = evaluate.main(["--checkpoint-dir", str(setup["ckpt"]), "--cache-dir", str(setup["cache"]), *EVAL,
                              "--dataset", "celebdf", "--data", str(setup["root"] / "celebdf"),
                              "--out", str(tmp_path)])
    assert code == 3
    errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1 and "No space left on device" in errors[0], errors
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing half-written


def test_full_disk_in_a_library_write_is_exit_3_too(setup, monkeypatch, capsys):
    """A bare OSError (a plotting library's own write), not only our atomic writes."""
    from common import evaluate

    def disk_full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "roc.png")

    monkeypatch.setattr(evaluate, "run", disk_full)
    assert evaluate.main(["--checkpoint-dir", str(setup["ckpt"]), "--dataset", "celebdf", "--data", "x"]) == 3
    assert one_line(capsys.readouterr().err) == "error: [Errno 28] No space left on device: 'roc.png'"
