"""Faults that come from the input, not the run: bad metadata, Ctrl-C in the extractor, a
video whose headers claim an absurd frame size."""
from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- huge frames

def _baseline_h264(width: int = 64, height: int = 64, frames: int = 5) -> bytes:
    """A bare Annex-B H.264 stream, baseline profile (its SPS has no high-profile fields)."""
    cc = av.CodecContext.create("libx264", "w")
    cc.width, cc.height, cc.pix_fmt = width, height, "yuv420p"
    cc.time_base, cc.framerate = Fraction(1, 25), Fraction(25)
    cc.options = {"profile": "baseline"}
    data = b""
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8), format="rgb24")
        frame.pts = i
        data += b"".join(bytes(p) for p in cc.encode(frame))
    return data + b"".join(bytes(p) for p in cc.encode(None))


def _unescape(nal: bytes) -> bytes:
    """Drop the emulation-prevention bytes (00 00 03 -> 00 00)."""
    out, zeros = bytearray(), 0
    for byte in nal:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def _escape(rbsp: bytes) -> bytes:
    out, zeros = bytearray(), 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def _ue(bits: str, i: int) -> tuple[int, int]:
    """One Exp-Golomb number at bit i -> (value, next bit)."""
    zeros = 0
    while bits[i + zeros] == "0":
        zeros += 1
    end = i + 2 * zeros + 1
    return int(bits[i + zeros:end], 2) - 1, end


def _ue_bits(value: int) -> str:
    b = bin(value + 1)[2:]
    return "0" * (len(b) - 1) + b


def _claim_size(sps: bytes, width: int, height: int) -> bytes:
    """A baseline SPS (RBSP) with its picture size in macroblocks replaced."""
    bits = "".join(f"{b:08b}" for b in sps)
    assert int(bits[:8], 2) == 66, "expected a baseline-profile SPS"
    i = 24
    _, i = _ue(bits, i)            # seq_parameter_set_id
    _, i = _ue(bits, i)            # log2_max_frame_num_minus4
    poc, i = _ue(bits, i)          # pic_order_cnt_type
    assert poc in (0, 2), poc
    if poc == 0:
        _, i = _ue(bits, i)        # log2_max_pic_order_cnt_lsb_minus4
    _, i = _ue(bits, i)            # max_num_ref_frames
    start = i + 1                  # after gaps_in_frame_num_value_allowed_flag
    _, i = _ue(bits, start)
    _, end = _ue(bits, i)
    new = bits[:start] + _ue_bits(width // 16 - 1) + _ue_bits(height // 16 - 1) + bits[end:]
    new = new[:new.rfind("1")] + "1"  # the stop bit, then byte alignment
    new += "0" * (-len(new) % 8)
    return bytes(int(new[k:k + 8], 2) for k in range(0, len(new), 8))


def huge_h264_mp4(path: Path, width: int = 16000, height: int = 16000) -> Path:
    """An MP4 of a 64x64 stream whose SPS (and so the container's header) claims width x height:
    a few KB on disk, made in milliseconds."""
    nals = _baseline_h264().split(b"\x00\x00\x01")
    for k, nal in enumerate(nals):
        if nal and nal[0] & 0x1F == 7:  # the sequence parameter set
            nals[k] = nal[:1] + _escape(_claim_size(_unescape(nal.rstrip(b"\x00")[1:]), width, height))
    raw = path.with_suffix(".h264")
    raw.write_bytes(b"\x00\x00\x01".join(nals))
    # Remuxed with the decoder's pixel limit set, so that writing the test file stays cheap too.
    with av.open(str(raw), options={"max_pixels": str(8192 * 8192)}) as inp, \
            av.open(str(path), "w", format="mp4") as out:
        src = inp.streams.video[0]
        dst = out.add_stream_from_template(src)
        dst.time_base = Fraction(1, 25)
        for n, pkt in enumerate(p for p in inp.demux(src) if p.size):
            pkt.pts = pkt.dts = n
            pkt.time_base = Fraction(1, 25)
            pkt.stream = dst
            out.mux(pkt)
    raw.unlink()
    return path


def test_a_16000_px_h264_file_is_refused_from_its_headers_in_little_memory(tmp_path):
    """FFmpeg's stream probing inside av.open decodes a frame: without a limit this 2 KB file
    makes it allocate about 0.7 GB. Peak memory is the child's VmHWM (ru_maxrss would keep the
    forking pytest process's peak across exec)."""
    huge = huge_h264_mp4(tmp_path / "huge.mp4")
    assert huge.stat().st_size < 10_000
    code = ("import sys\nfrom common.faces.video import probe, BadVideoError\n"
            "try:\n    probe(sys.argv[1])\nexcept BadVideoError as e:\n    print(e.reason)\n"
            "else:\n    print('accepted')\n"
            "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))")
    out = subprocess.run([sys.executable, "-c", code, str(huge)], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split("\n")
    assert out[0] == "frame size 16000x16000 is over the 8192 px limit", out
    assert int(out[1]) <= 200 * 1024, f"peak {int(out[1]) / 1024:.0f} MB"  # VmHWM is in kB


# ----------------------------------------------------------------------------- bad metadata

def test_dfdc_originals_that_name_themselves_a_fake_or_nothing_warn_once_and_group_safely(
        sample_root, tmp_path, caplog):
    import json
    import logging
    import shutil

    from common.data.datasets import index_dfdc, part_dirs

    part = tmp_path / "dfdc" / "dfdc_train_part_0"
    shutil.copytree(part_dirs(sample_root / "dfdc")[0], part)
    meta = json.loads((part / "metadata.json").read_text())
    real = next(n for n, e in meta.items() if e["label"] == "REAL" and
                sum(f.get("original") == n for f in meta.values()) >= 2)
    first, second = sorted(n for n, e in meta.items() if e.get("original") == real)[:2]
    others = sorted(n for n, e in meta.items() if e["label"] == "FAKE" and n not in (first, second))
    selfish, lost = others[0], others[1]
    meta[first]["original"] = second              # a fake named as the original: chain to the real
    meta[selfish]["original"] = selfish           # itself
    meta[lost]["original"] = "nowhere.mp4"        # no such file
    (part / "metadata.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="common.data.datasets"):
        records = {Path(r.rel).name: r for r in index_dfdc(tmp_path / "dfdc", seed=42)}
    lines = [r.getMessage() for r in caplog.records if "'original'" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "itself: 1" in lines[0] and "another fake: 1" in lines[0] and "a file not on disk: 1" in lines[0]
    # the chain ends at the real: all three videos share its group (and its split)
    assert records[first].group == records[second].group == records[real].group == real
    assert records[first].split == records[real].split
    assert records[first].source == records[real].rel
    assert records[selfish].group == selfish and records[selfish].source is None
    assert records[lost].group == "nowhere.mp4" and records[lost].source is None


def test_an_empty_training_split_stops_before_any_work(sample_root, tmp_path, capsys):
    import json
    import shutil

    from common.cli import EXIT_USER_ERROR, run_stage

    splits = tmp_path / "splits"
    shutil.copytree(sample_root / "faceforensics" / "splits", splits)
    (splits / "train.json").write_text(json.dumps([]))
    args = ["--data", str(sample_root / "faceforensics"), "--splits", str(splits), "--checkpoint-dir",
            str(tmp_path / "ck"), "--cache-dir", str(tmp_path / "cache"), "--backbone", "mobilenet_v3_small",
            "--pretrained", "none", "--image-size", "32", "--frames-per-video", "2", "--workers", "0",
            "--device", "cpu", "--no-status", "--face-detector", "none"]
    assert run_stage("bg", "stage1_faceforensics", args) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == (f"error: no training videos in {sample_root / 'faceforensics'} "
                                        f"(check {splits}/train.json)")
    assert not (tmp_path / "cache").exists()  # before any extraction, let alone an epoch
    assert not list((tmp_path / "ck").glob("*.metrics.jsonl"))


def test_an_empty_celebdf_test_list_is_an_error(tmp_path):
    from common.data.datasets import index_celebdf
    from common.errors import DatasetLayoutError

    for folder, names in (("Celeb-real", ["id0_0000.mp4", "id1_0000.mp4"]),
                          ("Celeb-synthesis", ["id0_id1_0000.mp4"])):
        (tmp_path / folder).mkdir()
        for name in names:
            (tmp_path / folder / name).write_bytes(b"")
    (tmp_path / "List_of_testing_videos.txt").write_text("\n\n")
    with pytest.raises(DatasetLayoutError, match="List_of_testing_videos.txt: lists no videos"):
        index_celebdf(tmp_path)
    (tmp_path / "List_of_testing_videos.txt").unlink()  # no file at all: trains without a test split
    assert {r.split for r in index_celebdf(tmp_path)} <= {"train", "val"}


# ----------------------------------------------------------------------------- Ctrl-C in extract

SLOW = '''
import time
import common.faces.extraction as fx
_real = fx.extract_video
def _slow(*a, **k):
    out = _real(*a, **k)
    time.sleep(1.0)
    return out
fx.extract_video = _slow
'''


@pytest.mark.parametrize("workers", [0, 2])
def test_ctrl_c_in_extract_exits_130_with_one_line_and_the_cache_stays_usable(sample_root, tmp_path, workers):
    """Ctrl-C in a terminal reaches the whole process group: so does this SIGINT."""
    import signal
    import time

    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SLOW)
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "common.extract", "--dataset", "faceforensics", "--data",
           str(sample_root / "faceforensics"), "--cache-dir", str(cache), "--face-detector", "none",
           "--image-size", "32", "--frames-per-video", "2", "--clip-len", "3", "--workers", str(workers),
           "--no-progress", "--no-audio"]
    env = dict(os.environ, PYTHONPATH=f"{shim}{os.pathsep}{REPO}")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.time() + 300
    while not list(cache.glob("*/*.json")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = [x for x in err.splitlines() if not x.startswith(("INFO", "WARNING"))]
    assert lines == ["interrupted: extraction stopped by Ctrl-C; the videos finished so far stay cached, "
                     "rerun the same command to continue"], err
    kept = len(list(cache.glob("*/*.json")))
    assert kept >= 1

    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    summary = again.stdout.strip().splitlines()[0]
    assert f"{kept} already cached" in summary and "failed: 0" in summary, summary
    from common.data.datasets import index_faceforensics

    total = len(index_faceforensics(sample_root / "faceforensics"))
    assert len(list(cache.glob("*/*.json"))) == total
    assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]
    from common.faces.cache import FaceCache

    faces = FaceCache(cache, "faceforensics", 32, 2, 3, "none")
    for meta in cache.glob("*/*.json"):
        rel = next(r.rel for r in index_faceforensics(sample_root / "faceforensics") if faces.paths(r.rel)["meta"] == meta)
        assert faces.verify(rel) and faces.entry(rel)[0].shape[:2] == (2, 3)
