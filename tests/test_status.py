import json
import shutil
from pathlib import Path

from common.cli import run_stage
from common.training.checkpoints import save_checkpoint, stage_paths
import common.training.progress as status

REPO = Path(__file__).resolve().parents[1]


def _epoch(epoch, auc, collapsed=False, epochs=3, best=True):
    return {"epoch": epoch, "epochs": epochs, "time": f"2026-01-0{epoch}T00:00:00", "best": best,
            "val": {"video": {"auc": auc}, "collapse": {"collapsed": collapsed}}}


def _write(ck: Path, model: str, stage: str, lines: list[dict], best: bool = True):
    paths = stage_paths(ck, model, stage)
    ck.mkdir(parents=True, exist_ok=True)
    paths.metrics.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"torn line')
    if best:  # a whole (if empty) checkpoint file: status flags a truncated one
        save_checkpoint({"model": {}, "model_options": {}}, paths.best)


def test_states_come_from_the_files_alone(tmp_path, capsys):
    ck = tmp_path / "ck"
    _write(ck, "bg", "stage1_faceforensics", [_epoch(1, 0.7), _epoch(2, 0.8), {"final": {"collapsed": False}}])
    _write(ck, "bg", "stage2_celebdf", [_epoch(1, 0.6)])
    _write(ck, "tm", "stage1_faceforensics", [_epoch(1, 0.5, True), {"final": {"collapsed": True}}])
    rows = {(r["model"], r["stage"]): r for r in status.all_states(ck)}
    assert rows[("bg", "stage1_faceforensics")]["state"] == "done"
    assert rows[("bg", "stage1_faceforensics")]["kept_auc"] == 0.8
    assert rows[("bg", "stage2_celebdf")]["state"] == "stopped after epoch 1 of 3"
    assert rows[("tm", "stage1_faceforensics")]["state"] == "collapsed"
    assert rows[("cm", "stage4_dfdc")]["state"] == "not started"
    assert status.main(["--checkpoint-dir", str(ck)]) == 1  # a collapsed stage fails the command
    out = capsys.readouterr()
    assert "| TM | stage1_faceforensics | collapsed |" in out.out and "attention" in out.err


def test_the_auc_shown_is_the_kept_epochs_and_the_validation_is_named(tmp_path, capsys):
    ck = tmp_path / "ck"
    # Epoch 2 has the higher AUC but collapsed, so epoch 1 is kept: the table shows the kept
    # epoch's figure (the final line's), not the highest of any epoch.
    final = {"final": {"collapsed": False, "validation": "held-out part 10",
                       "val": {"video": {"auc": 0.7}, "collapse": {"collapsed": False}}}}
    _write(ck, "cm", "stage4_dfdc", [_epoch(1, 0.7), _epoch(2, 0.95, collapsed=True, best=False), final])
    # still running: the last epoch marked best so far
    running = [dict(_epoch(1, 0.66), validation="grouped by identity"), _epoch(2, 0.9, best=False)]
    _write(ck, "rr", "stage2_celebdf", running)
    rows = {(r["model"], r["stage"]): r for r in status.all_states(ck)}
    assert rows[("cm", "stage4_dfdc")]["kept_auc"] == 0.7
    assert rows[("rr", "stage2_celebdf")]["kept_auc"] == 0.66
    status.main(["--checkpoint-dir", str(ck)])
    out = capsys.readouterr().out
    assert "| model | stage | state | kept epoch's val video AUC | validation |" in out
    assert "| CM | stage4_dfdc | done | 0.7000 | held-out part 10 |" in out
    assert "| RR | stage2_celebdf | stopped after epoch 2 of 3 | 0.6600 | grouped by identity |" in out


def test_healthy_and_failed_runs(tmp_path):
    ck = tmp_path / "ck"
    _write(ck, "rr", "stage1_faceforensics", [_epoch(1, 0.9), {"final": {"collapsed": False}}])
    assert status.main(["--checkpoint-dir", str(ck)]) == 0
    _write(ck, "rr", "stage2_celebdf", [_epoch(1, 0.9), {"failed": "loss is nan"}])
    assert status.main(["--checkpoint-dir", str(ck)]) == 1
    assert status.main(["--checkpoint-dir", str(tmp_path / "absent")]) == 2


def test_plain_status_reads_the_scripts_default_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert status.main([]) == 0  # before any training: nothing to report, not an error
    assert "nothing trained here yet: no checkpoints/ folder" in capsys.readouterr().out
    _write(tmp_path / "checkpoints", "rr", "stage1_faceforensics", [_epoch(1, 0.9), {"final": {"collapsed": False}}])
    assert status.main([]) == 0 and "| RR | stage1_faceforensics | done |" in capsys.readouterr().out
    _write(tmp_path / "checkpoints", "rr", "stage2_celebdf", [_epoch(1, 0.9), {"failed": "loss is nan"}])
    assert status.main([]) == 1


def test_status_file_keeps_the_hand_written_text(tmp_path):
    doc = tmp_path / "STATUS.md"
    shutil.copy(REPO / "TRAINING_STATUS.md", doc)
    before = doc.read_text()
    status.update_status_file(doc, tmp_path / "ck", status.live_row("av", "stage2_celebdf", "running", 2, 5, 0.75))
    after = doc.read_text()
    assert "| AV | stage2_celebdf | running epoch 2 of 5 | 0.7500 | - |" in after
    head, tail = before.split(status.START)[0], before.split(status.END)[1]
    assert after.startswith(head) and after.endswith(tail)
    plain = tmp_path / "plain.md"
    plain.write_text("# my notes\n")
    status.update_status_file(plain, tmp_path / "ck")
    assert plain.read_text().startswith("# my notes\n") and status.END in plain.read_text()


def test_a_run_refreshes_the_table_at_every_epoch(sample_root, tmp_path, monkeypatch, yunet_model):
    doc = tmp_path / "STATUS.md"
    shutil.copy(REPO / "TRAINING_STATUS.md", doc)
    snapshots = []
    real = status.update_status_file

    def spy(path, checkpoint_dir, live=None):
        real(path, checkpoint_dir, live)
        snapshots.append(Path(path).read_text())

    monkeypatch.setattr(status, "update_status_file", spy)
    monkeypatch.setattr("common.training.metrics.COLLAPSE_AUC", -1.0)  # two epochs on four videos: chance AUC
    # ... and CM's native patches of the smooth synthetic faces barely differ: nor the spread rule
    monkeypatch.setattr("common.training.metrics.COLLAPSE_SPREAD", 0.0)
    code = run_stage("cm", "stage1_faceforensics", [
        "--data", str(sample_root / "faceforensics"), "--checkpoint-dir", str(tmp_path / "ck"),
        "--cache-dir", str(tmp_path / "cache"), "--backbone", "mobilenet_v3_small", "--pretrained", "none",
        "--image-size", "32", "--frames-per-video", "2", "--epochs", "2", "--batch-size", "8",
        "--workers", "0", "--max-videos", "4", "--status-file", str(doc)])
    assert code == 0
    assert any("| CM | stage1_faceforensics | running epoch 2 of 2 |" in s for s in snapshots)
    final = doc.read_text()
    assert "| CM | stage1_faceforensics | done |" in final
    assert final.split(status.START)[0] == (REPO / "TRAINING_STATUS.md").read_text().split(status.START)[0]


def test_a_stage_whose_every_epoch_collapsed_shows_as_failed(sample_root, tmp_path, monkeypatch, yunet_model):
    monkeypatch.setattr("common.training.metrics.COLLAPSE_AUC", 1.01)
    ck = tmp_path / "ck"
    code = run_stage("rr", "stage1_faceforensics", [
        "--data", str(sample_root / "faceforensics"), "--checkpoint-dir", str(ck),
        "--cache-dir", str(tmp_path / "cache"), "--backbone", "mobilenet_v3_small", "--pretrained", "none",
        "--image-size", "32", "--frames-per-video", "2", "--epochs", "1", "--batch-size", "8",
        "--workers", "0", "--max-videos", "4", "--no-status"])
    assert code == 3
    row = next(r for r in status.all_states(ck) if (r["model"], r["stage"]) == ("rr", "stage1_faceforensics"))
    assert row["state"].startswith("failed") and status.main(["--checkpoint-dir", str(ck)]) == 1
