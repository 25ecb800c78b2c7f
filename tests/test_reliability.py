"""Fault injection: killed runs, corrupt media, bad arguments, full disks, determinism.

Every stage here is the tiny BG stage 1 of test_training (mobilenet_v3_small, 32 px crops,
2 frames per video, 4 videos per split, 2 epochs of 2 steps). `straight` is one uninterrupted
run of it; the interrupted runs must end with exactly its weights after --resume. Real
SIGKILLs go to the real script in a subprocess, paused at a chosen point by a
`sitecustomize` shim written into tmp (no test hooks in the product code).
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from common.cli import EXIT_INTERRUPTED, EXIT_TRAINING_FAILED, EXIT_USER_ERROR, run_stage
from common.data.synthetic import face_video, write_mp4
from common.faces.cache import CacheWriteError, FaceCache
from common.faces.extraction import build_face_cache
from common.training.checkpoints import FORMAT_VERSION, load_checkpoint, save_checkpoint, stage_paths

REPO = Path(__file__).resolve().parents[1]
MODEL, STAGE = "bg", "stage1_faceforensics"
SCRIPT = REPO / f"train_{MODEL}_{STAGE}.py"
SMALL = ["--backbone", "mobilenet_v3_small", "--pretrained", "none", "--image-size", "32",
         "--frames-per-video", "2", "--clip-len", "3", "--epochs", "2", "--batch-size", "4",
         "--workers", "0", "--max-videos", "4", "--device", "cpu", "--no-status", "--face-detector", "none"]
STEPS_PER_EPOCH = 2  # 4 train videos x 2 frames / batch 4


# The same switch for the scripts run in subprocesses, as a sitecustomize shim.
UNTRAINED = "import common.training.metrics\ncommon.training.metrics.COLLAPSE_AUC = -1.0\n"


@pytest.fixture(autouse=True, scope="module")
def untrained_students_are_not_collapsed():
    """Two epochs on four videos give a chance-level AUC, which the collapse rule would stop
    with exit 3 (tests/test_training.py tests the rule); switched off here."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("common.training.metrics.COLLAPSE_AUC", -1.0)
        yield


def stage_args(data: Path, work: Path, *extra: str, cache: Path | None = None) -> list[str]:
    """SMALL with later flags winning (argparse keeps the last value of a repeated flag)."""
    return ["--data", str(data), "--checkpoint-dir", str(work / "ck"),
            "--cache-dir", str(cache or work / "cache"), *SMALL, *extra]


def paths_of(work: Path, model: str = MODEL, stage: str = STAGE):
    return stage_paths(work / "ck", model, stage)


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs between {a} and {b}"


def metric_lines(work: Path, model: str = MODEL, stage: str = STAGE) -> list[dict]:
    return [json.loads(x) for x in paths_of(work, model, stage).metrics.read_text().splitlines()]


def snapshot(*dirs: Path) -> dict[str, bytes]:
    """Every file under `dirs` with its bytes: proves that a failed run overwrote nothing."""
    return {str(p): p.read_bytes() for d in dirs if d.exists() for p in sorted(d.rglob("*")) if p.is_file()}


def temp_files(*dirs: Path) -> list[str]:
    return [p.name for d in dirs if d.exists() for p in d.rglob(".*") if ".tmp" in p.name]


def one_line(err: str) -> str:
    """The only line on stderr (a run stopped before any progress bar)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def message(err: str) -> str:
    """The one message line of a run that got as far as progress bars (tqdm, on stderr)."""
    lines = [x for x in re.split(r"[\r\n]", err) if re.match(r"(error|training failed|interrupted): ", x)]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def ff(sample_root) -> Path:
    return sample_root / "faceforensics"


@pytest.fixture(scope="module")
def straight(ff, tmp_path_factory) -> Path:
    """The reference: one uninterrupted run. Its cache is shared by the runs that read it."""
    work = tmp_path_factory.mktemp("straight")
    assert run_stage(MODEL, STAGE, stage_args(ff, work)) == 0
    return work


# ----------------------------------------------------------------------------- 5. determinism

def test_two_runs_with_the_same_seed_give_identical_weights(ff, straight, tmp_path):
    """Separate face caches too: extraction is as deterministic as training."""
    assert run_stage(MODEL, STAGE, stage_args(ff, tmp_path)) == 0
    assert_same_weights(paths_of(straight).best, paths_of(tmp_path).best)
    assert_same_weights(paths_of(straight).last, paths_of(tmp_path).last)

    def timeless(line: dict) -> dict:  # wall-clock fields are the only ones allowed to differ
        line.pop("time", None)
        line.get("train", {}).pop("samples_per_s", None)
        line.get("final", {}).get("data", {}).pop("skipped_list", None)
        return line

    assert [timeless(x) for x in metric_lines(straight)] == [timeless(x) for x in metric_lines(tmp_path)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_match_one_process(ff, straight, tmp_path):
    """2 ranks x batch 2 see exactly the global batches (and augmentation seeds) of 1 rank x
    batch 4, from the same initial weights; only BatchNorm statistics (per rank: 2 samples,
    not 4) and dropout masks differ, and that difference grows with every step. So:
    - the initial weights are identical (fingerprint, exact);
    - both see the same number of samples per epoch and evaluate every validation video once;
    - the first epoch's training loss (averaged over both ranks' samples) is within 0.1 of
      the single process's (about 0.03 apart here, at a loss near ln 2 = 0.69);
    - evaluating the 2-process run's best weights in one process reproduces its final
      (gathered, calibrated) validation metrics to 1e-5: distributed evaluation is exact.
    """
    work = tmp_path / "ddp"
    work.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={_free_port()}", str(SCRIPT),
           *stage_args(ff, work, "--batch-size", "2", cache=straight / "cache")]
    shim = tmp_path / "untrained"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(UNTRAINED)
    env = dict(os.environ, PYTHONPATH=f"{shim}{os.pathsep}{REPO}")
    out = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    one, two = metric_lines(straight), metric_lines(work)
    e1, e2 = [x for x in one if "epoch" in x], [x for x in two if "epoch" in x]
    assert len(e1) == len(e2) == 2
    for a, b in zip(e1, e2):
        assert a["train"]["samples"] == b["train"]["samples"]
        assert a["val"]["frame"]["n"] == b["val"]["frame"]["n"]
        assert a["val"]["video"]["n"] == b["val"]["video"]["n"]
    assert abs(e1[0]["train"]["loss"] - e2[0]["train"]["loss"]) < 0.1, (e1[0]["train"], e2[0]["train"])
    ddp_final = two[-1]["final"]
    assert ddp_final["init_fingerprint"] == one[-1]["final"]["init_fingerprint"]

    # The same weights evaluated by one process: copy the finished run and --resume it
    # (nothing left to train, so it goes straight to calibration and the final report).
    solo = tmp_path / "solo"
    shutil.copytree(work / "ck", solo / "ck")
    assert run_stage(MODEL, STAGE, stage_args(ff, solo, "--resume", cache=straight / "cache")) == 0
    solo_final = metric_lines(solo)[-1]["final"]
    assert solo_final["val"]["video"]["n"] == ddp_final["val"]["video"]["n"]
    for key in ("auc", "ap", "balanced_acc"):
        assert solo_final["val"]["video"][key] == pytest.approx(ddp_final["val"]["video"][key], abs=1e-5)
    assert solo_final["val"]["frame"]["auc"] == pytest.approx(ddp_final["val"]["frame"]["auc"], abs=1e-5)
    assert solo_final["temperature"] == pytest.approx(ddp_final["temperature"], abs=1e-4)


# ----------------------------------------------------------------------------- 1. killed runs

SHIM = '''
import os, time
from pathlib import Path

_mode = os.environ.get("FAULT_MODE")
_box, _at = Path(os.environ.get("FAULT_DIR", ".")), int(os.environ.get("FAULT_AT", "0"))
_count = [0]


def _pause():  # tell the test where we are, then wait for its SIGKILL
    (_box / "paused").write_text(str(os.getpid()))
    time.sleep(300)


def _counted(real, after_call):
    def wrapper(*a, **k):
        out = real(*a, **k)
        _count[0] += 1
        if _count[0] == _at:
            after_call(a)
            _pause()
        return out
    return wrapper


if _mode == "step":  # pause after optimiser step number FAULT_AT
    import torch
    torch.optim.AdamW.step = _counted(torch.optim.AdamW.step, lambda a: None)
elif _mode == "cachewrite":  # pause inside face-cache write number FAULT_AT: temp written, not renamed
    import common.faces.cache as _cache
    _cache._write_bytes = _counted(_cache._write_bytes, lambda a: a[0].flush())
'''


def run_until_paused(tmp_path: Path, args: list[str], mode: str, at: int):
    """Start the real script with the shim; return (process, log path) once it has paused."""
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(UNTRAINED + SHIM)
    env = dict(os.environ, PYTHONPATH=f"{shim}{os.pathsep}{REPO}", FAULT_MODE=mode,
               FAULT_DIR=str(shim), FAULT_AT=str(at))
    log = tmp_path / f"{mode}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=tmp_path, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while not (shim / "paused").exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"never reached the pause (exit {proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    return proc, log


def sigkill(proc) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


def test_sigkill_mid_epoch_then_resume_loses_only_the_epoch(ff, straight, tmp_path):
    args = stage_args(ff, tmp_path, cache=straight / "cache")
    proc, _ = run_until_paused(tmp_path, args, "step", STEPS_PER_EPOCH + 1)  # 1st step of epoch 2
    sigkill(proc)
    paths = paths_of(tmp_path)
    last = load_checkpoint(paths.last, MODEL)  # the end of epoch 1: complete and loadable
    assert last["position"]["phase"] == 1 and last["position"]["batches_done"] == 0
    assert [x["epoch"] for x in metric_lines(tmp_path)] == [1]

    assert run_stage(MODEL, STAGE, args + ["--resume"]) == 0
    assert [x["epoch"] for x in metric_lines(tmp_path) if "epoch" in x] == [1, 2]
    assert_same_weights(paths.last, paths_of(straight).last)
    assert_same_weights(paths.best, paths_of(straight).best)


def test_sigkill_during_face_extraction_then_resume(ff, straight, tmp_path):
    """Killed while a crop file is half-way into the cache (temp written, not renamed, no
    json): --resume (there is no checkpoint yet) redoes that video and ends with the
    reference weights."""
    from common.faces.views import STORED_VIEWS

    args = stage_args(ff, tmp_path)
    # one file per view and video: the write after two whole videos is the third's face view
    proc, _ = run_until_paused(tmp_path, args, "cachewrite", 2 * len(STORED_VIEWS) + 1)
    cache_dir = next((tmp_path / "cache").iterdir())
    pending = temp_files(cache_dir)
    sigkill(proc)
    assert len(pending) == 1  # the kill landed mid-write
    half = pending[0][1:].split(".face.frames")[0]
    assert not (cache_dir / f"{half}.json").exists()
    assert len(list(cache_dir.glob("*.json"))) == 2
    assert not paths_of(tmp_path).last.exists()

    assert run_stage(MODEL, STAGE, args + ["--resume"]) == 0
    assert temp_files(cache_dir) == []
    assert (cache_dir / f"{half}.json").is_file()
    assert len(json.loads((cache_dir / f"{half}.json").read_text())["frame_indices"]) == 2
    assert_same_weights(paths_of(tmp_path).last, paths_of(straight).last)


class _Killed(BaseException):
    """Stands in for SIGKILL inside this process: nothing catches it, nothing cleans up."""


def test_kill_during_a_checkpoint_write_never_reads_the_half_file(ff, straight, tmp_path, monkeypatch):
    import common.data.atomic as atomic_mod
    import common.training.checkpoints as ck_mod

    real_write, calls = ck_mod.atomic_write, {"n": 0}

    def half_then_killed(f):
        f.write(b"PK\x03\x04 half a checkpoint")
        f.flush()
        raise _Killed

    def dies_half_way(path, write, mode="wb"):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 2's first checkpoint write
            return real_write(path, half_then_killed, mode)
        return real_write(path, write, mode)

    monkeypatch.setattr(ck_mod, "atomic_write", dies_half_way)
    monkeypatch.setattr(atomic_mod, "_remove_quietly", lambda p: None)  # a killed process cleans nothing
    args = stage_args(ff, tmp_path, cache=straight / "cache")
    with pytest.raises(_Killed):
        run_stage(MODEL, STAGE, args)
    monkeypatch.undo()
    ck_dir = tmp_path / "ck"
    assert len(temp_files(ck_dir)) == 1
    assert load_checkpoint(paths_of(tmp_path).last)["position"]["phase"] == 1  # epoch 1's, intact

    assert run_stage(MODEL, STAGE, args + ["--resume"]) == 0
    assert temp_files(ck_dir) == []  # the leftover was tidied, never read
    assert_same_weights(paths_of(tmp_path).last, paths_of(straight).last)


def test_sigterm_mid_epoch_saves_state_then_resume_matches(ff, straight, tmp_path, monkeypatch, capsys):
    """A real SIGTERM through the real handler, three optimiser steps in (epoch 2, step 1)."""
    import common.training.stage as stage_mod

    real_epoch, steps = stage_mod.train_one_epoch, {"n": 0}

    def epoch_with_a_scheduler(*a, on_step, **k):
        def step(batches):
            on_step(batches)
            steps["n"] += 1
            if steps["n"] == STEPS_PER_EPOCH + 1:
                os.kill(os.getpid(), signal.SIGTERM)
        return real_epoch(*a, on_step=step, **k)

    monkeypatch.setattr(stage_mod, "train_one_epoch", epoch_with_a_scheduler)
    before = signal.getsignal(signal.SIGTERM)
    args = stage_args(ff, tmp_path, cache=straight / "cache")
    assert run_stage(MODEL, STAGE, args) == EXIT_INTERRUPTED
    assert "--resume" in message(capsys.readouterr().err)
    assert signal.getsignal(signal.SIGTERM) is before  # the stage gave the signal back
    last = load_checkpoint(paths_of(tmp_path).last)
    assert last["position"] == dict(last["position"], phase=1, batches_done=1)  # saved mid-epoch
    monkeypatch.undo()
    assert run_stage(MODEL, STAGE, args + ["--resume"]) == 0
    assert_same_weights(paths_of(tmp_path).last, paths_of(straight).last)


def test_sigterm_during_face_extraction_stops_at_once(ff, tmp_path, monkeypatch, capsys):
    import common.faces.extraction as fc

    real, done = fc.extract_video, {"n": 0}

    def extract_then_signal(*a, **k):
        meta = real(*a, **k)
        done["n"] += 1
        if done["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return meta

    monkeypatch.setattr(fc, "extract_video", extract_then_signal)
    assert run_stage(MODEL, STAGE, stage_args(ff, tmp_path)) == EXIT_INTERRUPTED
    assert "face extraction" in message(capsys.readouterr().err)
    assert done["n"] == 2  # not one video more
    cache_dir = next((tmp_path / "cache").iterdir())
    assert len(list(cache_dir.glob("*.json"))) == 2 and temp_files(cache_dir) == []


# ----------------------------------------------------------------------------- 2. corrupt media

def _remux(src: Path, dst: Path, options: dict | None = None, garble_audio: bool = False) -> None:
    """Copy the packets of src into a new mp4; audio packets replaced by noise when asked."""
    rng = np.random.default_rng(0)
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4", options=options or {}) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams if s.type in ("video", "audio")}
        for pkt in inp.demux():
            if pkt.dts is None or pkt.stream.index not in streams:
                continue
            index, kind = pkt.stream.index, pkt.stream.type
            if garble_audio and kind == "audio":
                noise = av.Packet(rng.integers(0, 256, pkt.size, dtype=np.uint8).tobytes())
                noise.pts, noise.dts, noise.time_base = pkt.pts, pkt.dts, pkt.time_base
                pkt = noise
            pkt.stream = streams[index]
            out.mux(pkt)


def _h264(frames: np.ndarray) -> bytes:
    """A bare H.264 stream (no container) of the frames."""
    cc = av.CodecContext.create("libx264", "w")
    cc.width, cc.height, cc.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    cc.time_base, cc.framerate = Fraction(1, 25), Fraction(25)
    data = b""
    for i, image in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = i
        data += b"".join(bytes(p) for p in cc.encode(frame))
    return data + b"".join(bytes(p) for p in cc.encode(None))


def make_bad_videos(folder: Path, plain: Path, with_audio: Path, prefix: str) -> dict[str, str | None]:
    """One file of each kind; name -> the skip reason expected (None = handled and used)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = with_audio.read_bytes()
    (folder / f"{prefix}trunc.mp4").write_bytes(data[:len(data) * 2 // 5])  # the index (moov) is lost
    _remux(plain, folder / "fast.tmp.mp4", {"movflags": "faststart"})
    fast = (folder / "fast.tmp.mp4").read_bytes()
    (folder / "fast.tmp.mp4").unlink()
    (folder / f"{prefix}truncend.mp4").write_bytes(fast[:len(fast) * 4 // 5])  # index fine, tail gone
    (folder / f"{prefix}zero.mp4").write_bytes(b"")
    (folder / f"{prefix}text.mp4").write_text("this is not a video\n")
    i = data.find(b"mdat")
    size = int.from_bytes(data[i - 4:i], "big")
    garbled = bytearray(data)
    garbled[i + 4:i - 4 + size] = bytes(size - 8)  # container intact, every frame zeros
    (folder / f"{prefix}nodecode.mp4").write_bytes(bytes(garbled))
    ramp = np.linspace(40, 200, 160, dtype=np.float32)[None, None, :, None]
    write_mp4(folder / f"{prefix}noface.mp4", np.broadcast_to(ramp, (12, 120, 160, 3)).astype(np.uint8))
    _remux(with_audio, folder / f"{prefix}badaudio.mp4", garble_audio=True)
    (folder / f"{prefix}varsize.mp4").write_bytes(_h264(face_video(12, (160, 120), 3, 3)) +
                                                   _h264(face_video(12, (128, 96), 3, 4)))
    write_mp4(folder / f"{prefix}portrait.mp4", face_video(24, (120, 160), 5, 5))
    return {f"{prefix}trunc.mp4": "bad_video", f"{prefix}zero.mp4": "bad_video",
            f"{prefix}text.mp4": "bad_video", f"{prefix}nodecode.mp4": "bad_video",
            f"{prefix}noface.mp4": "no_face", f"{prefix}truncend.mp4": None,
            f"{prefix}badaudio.mp4": None, f"{prefix}varsize.mp4": None, f"{prefix}portrait.mp4": None}


@pytest.fixture(scope="module")
def corrupt(sample_root, straight, tmp_path_factory):
    """A one-part DFDC tree: the 14 sample videos plus one bad file of each kind, each its own
    REAL group; then stage 4 (from the reference's weights, Haar detector) twice: with the
    default --max-bad-fraction (must stop) and with 0.5 (must train)."""
    from common.data.datasets import index_dfdc, part_dirs

    root = tmp_path_factory.mktemp("corrupt")
    part = root / "dfdc" / "dfdc_train_part_0"
    part.mkdir(parents=True)
    meta: dict = {}
    for folder in part_dirs(sample_root / "dfdc").values():
        for name, entry in json.loads((folder / "metadata.json").read_text()).items():
            shutil.copy(folder / name, part / name)
            meta[name] = entry
    plain = sample_root / "faceforensics/original_sequences/youtube/c23/videos/000.mp4"
    for prefix in "abcdefghij":  # names whose groups keep the skipped ones out of the tiny val split
        bad = make_bad_videos(part, plain, part / next(iter(meta)), prefix)
        for name in bad:
            meta[name] = {"label": "REAL", "split": "train", "original": None}
        (part / "metadata.json").write_text(json.dumps(meta))
        val = {Path(r.rel).name for r in index_dfdc(root / "dfdc", seed=42) if r.split == "val"}
        if not val & {n for n, why in bad.items() if why}:
            break
        for name in bad:
            (part / name).unlink()
            del meta[name]
    else:
        pytest.fail("every naming put a skipped video into the validation split")
    work = root / "work"
    init = paths_of(straight).best
    args = ["--data", str(root / "dfdc"), "--checkpoint-dir", str(work / "ck"), "--cache-dir", str(work / "cache"),
            *SMALL, "--face-detector", "haar", "--init", str(init), "--max-videos", "100", "--batch-size", "16",
            "--epochs", "1", "--chunks", "0"]
    runs = {}
    for name, extra in (("strict", []), ("lenient", ["--max-bad-fraction", "0.5"])):
        err = root / f"{name}.err"
        with open(err, "w") as f:
            old, sys.stderr = sys.stderr, f
            try:
                runs[name] = run_stage(MODEL, "stage4_dfdc", args + extra)
            finally:
                sys.stderr = old
        runs[name + "_err"] = err.read_text()
    return {"root": root, "part": part, "work": work, "bad": bad, "runs": runs}


def test_too_many_bad_videos_stop_with_one_clear_line(corrupt):
    runs = corrupt["runs"]
    assert runs["strict"] == EXIT_TRAINING_FAILED
    line = message(runs["strict_err"])
    skipped_file = paths_of(corrupt["work"], stage="stage4_dfdc").metrics.with_suffix("").with_suffix(".skipped.txt")
    assert line.startswith("training failed: 5 of ") and "train videos" in line
    assert "--max-bad-fraction" in line and str(skipped_file) in line


def test_each_bad_file_is_skipped_with_its_reason_or_used(corrupt):
    bad, work = corrupt["bad"], corrupt["work"]
    assert corrupt["runs"]["lenient"] == 0, corrupt["runs"]["lenient_err"]
    skipped_file = paths_of(work, stage="stage4_dfdc").metrics.with_suffix("").with_suffix(".skipped.txt")
    listed = dict(line.split("\t") for line in skipped_file.read_text().splitlines())
    expected = {f"dfdc_train_part_0/{n}": why for n, why in bad.items() if why}
    assert {rel: why.split(":")[0] for rel, why in listed.items()} == expected
    assert all(len(why) > len("bad_video: ") for why in listed.values())  # each says why

    final = metric_lines(work, stage="stage4_dfdc")[-1]["final"]
    assert final["data"]["skipped"] == {"bad_video": 4, "no_face": 1}
    assert final["data"]["audio_failed"] == 1
    cache = FaceCache(work / "cache", "dfdc", 32, 2, 3, "haar", preprocessing="clahe_bilateral")
    used = {n: cache.meta(f"dfdc_train_part_0/{n}") for n, why in bad.items() if why is None}
    assert all(m is not None for m in used.values()), used
    prefix = next(iter(bad))[0]
    assert used[f"{prefix}portrait.mp4"]["height"] > used[f"{prefix}portrait.mp4"]["width"]
    assert used[f"{prefix}badaudio.mp4"]["audio"] == dict(used[f"{prefix}badaudio.mp4"]["audio"], present=False,
                                                          reason="audio track failed to decode")
    assert used[f"{prefix}truncend.mp4"]["n_frames"] < 24  # resampled over the frames that decode


# ----------------------------------------------------------------------------- 3. bad arguments

def _junk(path: Path) -> Path:
    path.write_text("not a checkpoint")
    return path


def _other_model(path: Path) -> Path:
    save_checkpoint({"model": {}, "model_options": {"name": "cm"}}, path)
    return path


def _newer(path: Path) -> Path:
    torch.save({"format": FORMAT_VERSION + 1, "model": {}, "model_options": {"name": MODEL}}, path)
    return path


USER_ERRORS = {
    "data missing": (lambda t: ["--data", str(t / "nowhere")], "does not exist"),
    "data is a file": (lambda t: ["--data", str(_junk(t / "file.mp4"))], "is a file"),
    "init not a checkpoint": (lambda t: ["--init", str(_junk(t / "x.pt"))], "not a readable checkpoint"),
    "init from another model": (lambda t: ["--init", str(_other_model(t / "cm.pt"))], "CM model, not BG"),
    "init from a newer format": (lambda t: ["--init", str(_newer(t / "new.pt"))], "newer version"),
    "cache dir not writable": (lambda t: ["--cache-dir", str(_junk(t / "file.txt") / "sub")], "face cache folder"),
    "unknown backbone": (lambda t: ["--backbone", "resnet9000"], "unknown backbone 'resnet9000'"),
}


@pytest.mark.parametrize("case", list(USER_ERRORS))
def test_user_errors_exit_2_with_one_line_and_touch_nothing(ff, straight, tmp_path, capsys, case):
    make, expected = USER_ERRORS[case]
    work = tmp_path / "work"
    shutil.copytree(straight / "ck", work / "ck")  # a finished run that must survive intact,
    extra = make(tmp_path)                              # even one asked to be overwritten
    before = snapshot(work)
    assert run_stage(MODEL, STAGE, stage_args(ff, work, *extra, "--overwrite")) == EXIT_USER_ERROR
    line = one_line(capsys.readouterr().err)
    assert line.startswith("error: ") and expected in line
    assert snapshot(work) == before


def test_existing_but_read_only_cache_dir_is_a_user_error(ff, tmp_path, monkeypatch, capsys):
    """chmod does not stop root (CI), so the permission check itself is made to say no."""
    cache = tmp_path / "cache"
    cache.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p).parent == cache else real_access(p, mode))
    assert run_stage(MODEL, STAGE, stage_args(ff, tmp_path)) == EXIT_USER_ERROR
    line = one_line(capsys.readouterr().err)
    assert "is not writable" in line and str(cache) in line
    assert not any(p.is_file() for p in cache.rglob("*"))


def test_resume_from_a_corrupt_last_checkpoint_is_refused_and_kept(ff, tmp_path, capsys):
    last = paths_of(tmp_path).last
    last.parent.mkdir(parents=True)
    _junk(last)
    assert run_stage(MODEL, STAGE, stage_args(ff, tmp_path, "--resume")) == EXIT_USER_ERROR
    assert "not a readable checkpoint" in one_line(capsys.readouterr().err)
    assert last.read_text() == "not a checkpoint" and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("stage,extra,expected", [
    ("stage4_dfdc", ["--chunks", "7"], "dfdc_train_part_7"),
    ("stage4_dfdc", ["--data", "NOWHERE"], "does not exist"),
])
def test_dfdc_user_errors(sample_root, straight, tmp_path, capsys, stage, extra, expected):
    extra = [str(tmp_path / "nowhere") if x == "NOWHERE" else x for x in extra]
    args = ["--data", str(sample_root / "dfdc"), "--checkpoint-dir", str(tmp_path / "ck"),
            "--cache-dir", str(tmp_path / "cache"), *SMALL, "--init", str(paths_of(straight).best), *extra]
    assert run_stage(MODEL, stage, args) == EXIT_USER_ERROR
    line = one_line(capsys.readouterr().err)
    assert expected in line and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("flag,value", [("--epochs", "0"), ("--lr", "-1"), ("--lr", "nan"),
                                        ("--max-bad-fraction", "2"), ("--chunks", "x")])
def test_bad_flag_values_are_refused_by_the_parser(tmp_path, capsys, flag, value):
    stage = "stage4_dfdc" if flag == "--chunks" else STAGE
    with pytest.raises(SystemExit) as exit_:
        run_stage(MODEL, stage, ["--data", str(tmp_path), f"{flag}={value}"])
    assert exit_.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    errors = [x for x in err.splitlines() if "error:" in x]
    assert len(errors) == 1 and flag in errors[0] and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- 4. full disk

@pytest.fixture
def small_disk(tmp_path):
    """A real 70 MB filesystem (tmpfs): room for one epoch's best + last checkpoints (29 MB
    each), not for the next epoch's. Needs root to mount; skipped otherwise."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the full-disk path is not exercised here")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=70m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); full-disk path not exercised")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_during_a_checkpoint_write_exits_3_and_keeps_the_previous_checkpoints(
        ff, straight, small_disk, capsys):
    work = small_disk
    code = run_stage(MODEL, STAGE, stage_args(ff, work, cache=straight / "cache"))
    assert code == EXIT_TRAINING_FAILED
    line = message(capsys.readouterr().err)
    assert line.startswith("training failed: cannot write ") and "No space left on device" in line
    paths = paths_of(work)
    for p in (paths.best, paths.last):  # epoch 1's files, whole and loadable
        assert load_checkpoint(p, MODEL)["position"]["phase"] == 1
    assert temp_files(work / "ck") == []
    assert [x["epoch"] for x in metric_lines(work) if "epoch" in x] == [1]


def test_every_file_of_a_run_has_one_mode(straight):
    modes = {p.name: p.stat().st_mode & 0o777 for p in (straight / "ck").iterdir() if p.is_file()}
    assert len(set(modes.values())) == 1, modes
    assert set(modes.values()) == {0o666 & ~_umask()}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------- 6. guards

def test_a_second_run_of_a_live_stage_is_refused(ff, straight, tmp_path, capsys):
    lock = paths_of(tmp_path).best.with_suffix(".lock")
    lock.parent.mkdir(parents=True)
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": owner.pid, "host": socket.gethostname()}))
        code = run_stage(MODEL, STAGE, stage_args(ff, tmp_path, cache=straight / "cache"))
    finally:
        owner.kill()
        owner.wait()
    assert code == EXIT_USER_ERROR
    line = one_line(capsys.readouterr().err)
    assert "already running" in line and f"pid {owner.pid}" in line
    assert sorted(p.name for p in lock.parent.iterdir()) == [lock.name]  # nothing written
    # The owner is gone: its lock is stale, and the next run takes it over and removes it.
    assert run_stage(MODEL, STAGE, stage_args(ff, tmp_path, cache=straight / "cache")) == 0
    assert not lock.exists()


def test_a_finished_stage_is_kept_unless_overwrite(ff, straight, tmp_path, capsys):
    shutil.copytree(straight / "ck", tmp_path / "ck")
    before = snapshot(tmp_path / "ck")
    assert run_stage(MODEL, STAGE, stage_args(ff, tmp_path, cache=straight / "cache")) == EXIT_USER_ERROR
    assert "is a finished stage; pass --overwrite" in one_line(capsys.readouterr().err)
    assert snapshot(tmp_path / "ck") == before
    assert run_stage(MODEL, STAGE, stage_args(ff, tmp_path, "--overwrite", cache=straight / "cache")) == 0
    lines = metric_lines(tmp_path)
    assert [x["epoch"] for x in lines if "epoch" in x] == [1, 2]  # one run's epochs, not two runs'
    assert sum("final" in x for x in lines) == 1


@pytest.mark.parametrize("flag, value", [("--image-size", "48"), ("--backbone", "resnet18"),
                                         ("--clip-len", "4"), ("--frames-per-video", "3")])
def test_resume_refuses_a_changed_shaping_flag(ff, straight, tmp_path, capsys, flag, value):
    shutil.copytree(straight / "ck", tmp_path / "ck")
    code = run_stage(MODEL, STAGE, stage_args(ff, tmp_path, "--resume", flag, value, cache=straight / "cache"))
    assert code == EXIT_USER_ERROR
    line = message(capsys.readouterr().err)
    assert f"--resume with {flag} {value}" in line and flag in line.split("trained with")[1]


def test_full_disk_during_a_cache_write_stops_and_blames_no_video(ff, tmp_path, monkeypatch, capsys):
    from common.faces.views import STORED_VIEWS

    import common.faces.cache as cache_module

    real_write, calls = cache_module._write_bytes, {"n": 0}

    def disk_fills_up(f, blob):
        calls["n"] += 1
        if calls["n"] > 2 * len(STORED_VIEWS):  # two whole videos (one file per view), then full
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(f, blob)

    monkeypatch.setattr(cache_module, "_write_bytes", disk_fills_up)
    code = run_stage(MODEL, STAGE, stage_args(ff, tmp_path))
    monkeypatch.undo()
    assert code == EXIT_TRAINING_FAILED
    line = message(capsys.readouterr().err)
    assert line.startswith("training failed: cannot write the face cache") and "No space left" in line
    cache_dir = next((tmp_path / "cache").iterdir())
    entries = sorted(cache_dir.glob("*.json"))
    assert len(entries) == 2 and temp_files(cache_dir) == []
    assert not list(cache_dir.glob("*.skip.json"))  # a full disk is not a bad video
    check = FaceCache(tmp_path / "cache", "faceforensics", 32, 2, 3, "none")
    for meta in entries:
        assert check.entry(json.loads(meta.read_text())["rel"])[0].shape[:2] == (2, 3)

    # With space again, the build picks up where it stopped.
    from common.data.datasets import index_faceforensics

    cache = FaceCache(tmp_path / "cache", "faceforensics", 32, 2, 3, "none")
    records = [r for r in index_faceforensics(ff) if r.split == "val"]
    summary = build_face_cache(records, cache, progress=False)
    assert summary["cached"] == 2 and summary["skipped"] == {} and not summary["failed"]
    assert summary["done"] == len(records) - 2


def test_cache_write_error_is_not_a_bad_video_in_the_builder(ff, tmp_path, monkeypatch):
    from common.data.datasets import index_faceforensics

    records = [r for r in index_faceforensics(ff) if r.split == "val"][:2]
    cache = FaceCache(tmp_path, "faceforensics", 32, 2, 3, "none")

    import common.faces.cache as cache_module

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(cache_module, "_write_bytes", read_only)
    with pytest.raises(CacheWriteError, match="Read-only file system"):
        build_face_cache(records, cache, progress=False)
    assert not list(cache.dir.glob("*.json"))


def test_a_huge_seed_trains(ff, straight, tmp_path):
    seed = str(2**70 + 5)
    assert run_stage(MODEL, STAGE, stage_args(ff, tmp_path, "--seed", seed, cache=straight / "cache")) == 0
    assert load_checkpoint(paths_of(tmp_path).best, MODEL)["config"]["seed"] == seed
