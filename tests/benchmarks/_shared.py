"""What the benchmarks share: synthetic inputs, side-by-side timing, conditions, JSON output.

The machines these run on are shared and noisy, so nothing is reported as an absolute time
alone: the things compared are timed in the same run, alternating, several times, and the
figure is the median of the per-round ratios.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DEFAULT_VIDEO_DIR = os.environ.get("BENCH_VIDEO_DIR", "/tmp/bench_videos")
DEFAULT_CACHE_DIR = os.environ.get("BENCH_CACHE_DIR", "/tmp/bench_cache")


def realdata_dir() -> Path | None:
    """The real videos' folder, $DEEPFAKE_REALDATA_DIR (a folder holding ffpp/, as for the
    tests); None where unset or absent (the benchmark then skips them)."""
    env = os.environ.get("DEEPFAKE_REALDATA_DIR")
    return Path(env) if env and Path(env).is_dir() else None


# ----------------------------------------------------------------------------- conditions

def conditions(**extra) -> dict:
    """Where and how the figures were measured."""
    import av
    import cv2
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    cond = {
        "cpu_count": os.cpu_count(), "cpus_usable": usable,
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "opencv": cv2.__version__, "opencv_threads": cv2.getNumThreads(), "pyav": av.__version__,
    }
    cond.update(extra)
    return cond


def emit(result: dict) -> dict:
    """Print the benchmark's one JSON object (stdout) and return it."""
    print(json.dumps(result, indent=1, sort_keys=False, default=str))
    sys.stdout.flush()
    return result


# ----------------------------------------------------------------------------- timing

def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process and its threads, result) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def interleaved(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, dict[str, list]]:
    """Run every fn once per round, the order rotating from round to round (so neither side
    always runs first, or always right after the other). {name: {"wall": [...], "cpu": [...]}}."""
    names = list(fns)
    out: dict[str, dict[str, list]] = {n: {"wall": [], "cpu": [], "result": []} for n in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            wall, cpu, res = timed(fns[name])
            out[name]["wall"].append(wall)
            out[name]["cpu"].append(cpu)
            out[name]["result"].append(res)
    return out


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median over rounds of num[i] / den[i]: each ratio compares runs made moments apart."""
    return median([a / b for a, b in zip(num, den) if b > 0])


def rounded(obj, digits: int = 4):
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    return obj


# ----------------------------------------------------------------------------- synthetic videos

def video_path(folder: str | os.PathLike, index: int, width: int, height: int, seconds: float,
               fps: float, face_px: int) -> Path:
    return Path(folder) / f"face_{width}x{height}_{seconds:g}s_{fps:g}fps_f{face_px}_{index:03d}.mp4"


def ensure_video(folder: str | os.PathLike, index: int = 0, width: int = 1920, height: int = 1080,
                 seconds: float = 10.0, fps: float = 30.0, face_px: int | None = None) -> Path:
    """A common.sample_data face video (H.264, yuv420p) in `folder`, made once and reused.

    Made in the benchmark's own process, not timed; a 1080p 10 s video takes a minute or two
    to draw and encode. The face must be found by the Haar detector, else the benchmark
    would be measuring the no-face path.
    """
    from common.faces.detectors import face_box, make_detector
    from common.data.synthetic import face_video, write_mp4

    face_px = face_px or max(48, int(min(width, height) * 0.3))
    path = video_path(folder, index, width, height, seconds, fps, face_px)
    if path.is_file() and path.stat().st_size > 0:
        return path
    n = max(1, int(round(seconds * fps)))
    frames = face_video(n, size=(width, height), identity=index % 8, seed=index, face_px=face_px,
                        fps=fps)
    detector = make_detector("haar")
    for i in (0, n // 2, n - 1):
        if face_box(frames[i], detector) is None:
            raise RuntimeError(f"{path}: the Haar detector finds no face in frame {i}; "
                               "use a larger face_px")
    write_mp4(path, frames, fps=fps)
    return path


# ----------------------------------------------------------------------------- synthetic cache

def face_crops(n_points: int, clip_len: int, size: int, seed: int = 0) -> np.ndarray:
    """uint8 [N, T, S, S, 3] crops that look like the cache's (a face filling the crop, moving
    a little), so CLAHE and the bilateral filter work on realistic content."""
    from common.data.synthetic import face_video

    frames = face_video(clip_len + n_points, size=(size, size), identity=seed % 8, seed=seed,
                        face_px=size)
    return np.stack([frames[i:i + clip_len] for i in range(n_points)])


def write_fake_cache(cache, n_videos: int, seed: int = 0, crops: np.ndarray | None = None,
                     fps: float = 30.0, audio: bool = False) -> list:
    """Complete FaceCache entries (written by FaceCache.write_entry: the real format, every
    view the cache stores, encoded) for n_videos synthetic videos, half real and half fake;
    returns their VideoRecords, whose source files are empty stand-ins under the cache root
    (an entry counts only while its source exists, unchanged). Entries already there are
    kept. All videos share one crop array (content does not change the cost of reading).
    `audio`: each entry also has a 10 s log-mel, as AV reads it."""
    from common.data.datasets import VideoRecord
    from common.faces.cache import file_stamp
    n, t, s = cache.frames_per_video, cache.clip_len, cache.crop_size
    if crops is None:
        crops = face_crops(n, t, s, seed)
    views = {v: crops if cache.run_length(v) == t else np.ascontiguousarray(crops[:, t // 2:t // 2 + 1])
             for v in cache.views}
    n_frames = int(10 * fps)
    starts = [int(round(i * (n_frames - t) / max(1, n - 1))) for i in range(n)]
    mel = np.random.default_rng(seed).uniform(-1, 1, (64, 1001)).astype(np.float32) if audio else None
    records = []
    for v in range(n_videos):
        rel = f"bench/v{v:06d}.mp4"
        label = v % 2
        source = cache.root / "bench-sources" / rel
        if not source.is_file():
            source.parent.mkdir(parents=True, exist_ok=True)
            source.write_bytes(b"")
        rec = VideoRecord(path=str(source), rel=rel, label=label, group=f"g{v // 2}",
                          split="train", has_audio=audio,
                          source=f"bench/v{v - 1:06d}.mp4" if label else None)
        records.append(rec)
        if cache.is_complete(rel, rec.path):
            continue
        meta = {"rel": rel, "label": label, "source": file_stamp(rec.path),
                "frame_indices": [list(range(st, st + t)) for st in starts],
                "boxes": [[800, 360, 1120, 680]] * n, "detected": [True] * n, "boxes_from": None,
                "fps": fps, "n_frames": n_frames, "width": 1920, "height": 1080,
                "duration_s": n_frames / fps, "crop_size": s, "clip_len": t,
                "frames_per_video": n, "detector": cache.detector,
                "audio": {"present": audio, "hop_s": 0.01, "n_frames": 1001 if audio else 0}}
        cache.write_entry(rel, views, mel, meta)
    return records


# ----------------------------------------------------------------------------- memory

def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024.0 if sys.platform != "darwin" else peak / 2**20


def current_rss_mb() -> float:
    """Resident set size now, in MiB (Linux /proc; falls back to the peak)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()
