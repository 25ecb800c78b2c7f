"""Face cache: face crops (and log-mel audio) extracted once per video, shared by all models.

Layout under <root>/<dataset>_s<crop>_n<N>_t<T>_<detector>/, per video key (rel with "/"
turned into "__", extension dropped):
  <key>.npy       uint8 [N, T, S, S, 3] RGB crops; run i is T consecutive frames
  <key>.mel.npy   float32 [N_MELS, F] log-mel of the whole track (only when audio present)
  <key>.json      metadata, written last: its presence means the entry is complete
  <key>.skip.json the video was skipped (no face, unreadable); not retried while the video
                  file keeps its size and mtime, unless build_face_cache(retry_skipped=True)
Every file is written to a hidden temp name in the same folder, fsynced, then renamed, so
a killed run leaves either a complete entry or one without json, which is redone.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import multiprocessing as mp
import os
import signal
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from common.audio import HOP_S, SAMPLE_RATE, decode_audio as _decode_audio, log_mel
from common.errors import UserError
from common.faces import crop_box, face_box, fill_missing, make_detector
from common.video import (BadVideoError, RegionConverter, count_frames, iter_decoded, luma, probe,
                          sample_points)

CACHE_VERSION = 1
AUDIO_FAILED = "audio track failed to decode"  # meta["audio"]["reason"]; counted in summaries
log = logging.getLogger(__name__)


class NoFaceError(Exception):
    """No face in any sampled frame of the video."""


class CacheWriteError(UserError):
    """Writing into the cache failed (full disk, quota, read-only folder). Not the video's
    fault: never recorded as a skipped video; the run stops, finished entries stay valid."""


def cache_key(dataset: str, crop_size: int, frames_per_video: int, clip_len: int,
              detector: str, preprocessing: str = "none") -> str:
    key = f"{dataset}_s{crop_size}_n{frames_per_video}_t{clip_len}_{detector}"
    return key if preprocessing == "none" else f"{key}_{preprocessing}"


def video_key(rel: str) -> str:
    """'a/b/c.mp4' -> 'a__b__c' (unique per video, flat file name)."""
    head, _, name = rel.replace("\\", "/").rpartition("/")
    stem = os.path.splitext(name)[0] or name
    return (head + "/" + stem if head else stem).replace("/", "__")


def shard_of(record: Any, n: int) -> int:
    """Stable shard of a record: the hash of its source real (its own rel for a real), so a
    real and its fakes land in the same shard and the fakes can reuse its boxes."""
    key = (record.source if record.label == 1 and record.source else record.rel).encode()
    return int.from_bytes(hashlib.sha1(key).digest()[:8], "big") % n


def _file_stamp(path: str) -> list | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_json(path: Path, obj: dict) -> None:
    _atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


class FaceCache:
    """Reader (and target) of one dataset's face cache folder."""

    def __init__(self, root: str | os.PathLike, dataset: str, crop_size: int = 224,
                 frames_per_video: int = 32, clip_len: int = 8, detector: str = "haar",
                 preprocessing: str = "none"):
        self.root = Path(root)
        self.dataset, self.detector = dataset, detector
        self.crop_size, self.frames_per_video, self.clip_len = crop_size, frames_per_video, clip_len
        # CLAHE / bilateral are deterministic: applied once here, not per sample in every epoch.
        self.preprocessing = preprocessing
        self.key = cache_key(dataset, crop_size, frames_per_video, clip_len, detector, preprocessing)
        self.dir = self.root / self.key

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return (self.frames_per_video, self.clip_len, self.crop_size, self.crop_size, 3)

    def paths(self, rel: str) -> dict[str, Path]:
        k = video_key(rel)
        return {"crops": self.dir / f"{k}.npy", "mel": self.dir / f"{k}.mel.npy",
                "meta": self.dir / f"{k}.json", "skip": self.dir / f"{k}.skip.json"}

    def meta(self, rel: str) -> dict | None:
        """The entry's json, or None when the entry is not complete."""
        p = self.paths(rel)
        try:
            meta = json.loads(p["meta"].read_text())
        except (OSError, ValueError):
            return None
        if not p["crops"].is_file():
            return None
        if meta.get("audio", {}).get("present") and not p["mel"].is_file():
            return None
        return meta

    def is_complete(self, rel: str) -> bool:
        return self.meta(rel) is not None

    def entry(self, rel: str) -> tuple[np.ndarray, dict] | None:
        """(read-only memmap uint8 [N, T, S, S, 3], meta) or None if not (completely) cached."""
        meta = self.meta(rel)
        if meta is None:
            return None
        try:
            crops = np.load(self.paths(rel)["crops"], mmap_mode="r")
        except (OSError, ValueError):
            return None
        return (crops, meta) if crops.shape == self.shape else None

    def mel(self, rel: str) -> np.ndarray | None:
        """float32 [N_MELS, F] log-mel of the video, or None when it has no usable audio."""
        meta = self.meta(rel)
        if meta is None or not meta["audio"]["present"]:
            return None
        return np.load(self.paths(rel)["mel"])

    def skip_reason(self, record: Any) -> str | None:
        """Why an earlier run skipped this video, if the file has not changed since."""
        try:
            marker = json.loads(self.paths(record.rel)["skip"].read_text())
        except (OSError, ValueError):
            return None
        return marker.get("reason") if marker.get("stamp") == _file_stamp(record.path) else None


# ----------------------------------------------------------------------------- extraction

class _Cropper:
    """Face boxes and crops straight from decoded frames. Only what is kept is converted
    to RGB: the crop's rectangle, not the 1080p frame (whose conversion costs more than
    its decoding); a detector that takes grayscale gets the luma plane as it is."""

    def __init__(self, detector, size: int):
        self.detector, self.size = detector, size
        self.gray = getattr(detector, "takes_gray", False)
        self.regions = RegionConverter()

    def box(self, frame):
        image = luma(frame) if self.gray else None
        return face_box(frame.to_ndarray(format="rgb24") if image is None else image, self.detector)

    def crop(self, frame, box) -> np.ndarray:
        x0, y0, x1, y1 = (int(v) for v in box[:4])
        sx0, sy0 = max(x0, 0), max(y0, 0)
        sx1, sy1 = min(x1, frame.width), min(y1, frame.height)
        if (sx0, sy0, sx1, sy1) == (x0, y0, x1, y1):  # inside the frame: one swscale pass
            out = self.regions.resized(frame, x0, y0, x1, y1, self.size, self.size)
            if out is not None:
                return out
        if sx1 <= sx0 or sy1 <= sy0:  # box wholly outside the frame: black, like crop_box
            return np.zeros((self.size, self.size, 3), np.uint8)
        # At the frame's edge: the in-frame part in RGB, black padding, then resized.
        part = self.regions.rgb(frame, sx0, sy0, sx1, sy1)
        return crop_box(part, (x0 - sx0, y0 - sy0, x1 - sx0, y1 - sy0), self.size)


def _extract_crops(path: str, runs: list[list[int]], size: int, detector,
                   boxes: Sequence | None) -> tuple[np.ndarray, list, list[bool], set[int]]:
    """Crops for all runs in one streaming pass; the box of run i comes from its centre
    frame (or from `boxes`). Frames are cropped as soon as their box is known, so only a
    few decoded frames are held at a time; runs without a face are re-read at the end with
    their nearest neighbour's box. Returns crops, boxes, detected flags, indices missing."""
    n, t = len(runs), len(runs[0])
    crops = np.zeros((n, t, size, size, 3), dtype=np.uint8)
    known: list = [tuple(b) for b in boxes] if boxes is not None else [None] * n
    tried = [boxes is not None] * n
    detected = [False] * n
    cropper = _Cropper(detector, size)
    where: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for i, run in enumerate(runs):
        for j, idx in enumerate(run):
            where[idx].append((i, j))
    waiting: dict[int, dict[int, Any]] = defaultdict(dict)  # frames before the centre
    seen: set[int] = set()
    for idx, frame in iter_decoded(path, where.keys()):
        seen.add(idx)
        for i, j in where[idx]:
            if not tried[i] and idx == runs[i][t // 2]:
                tried[i] = True
                known[i] = cropper.box(frame)
                detected[i] = known[i] is not None
                for jj, f in waiting.pop(i, {}).items():
                    if known[i] is not None:
                        crops[i, jj] = cropper.crop(f, known[i])
            if known[i] is not None:
                crops[i, j] = cropper.crop(frame, known[i])
            elif not tried[i]:
                waiting[i][j] = frame
    missing = set(where) - seen
    if missing:
        return crops, known, detected, missing
    filled = fill_missing(known)
    if filled is None:
        raise NoFaceError("no face found in any sampled frame")
    redo = [i for i in range(n) if known[i] is None]
    if redo:
        todo = {idx for i in redo for idx in runs[i]}
        for idx, frame in iter_decoded(path, todo):
            for i, j in where[idx]:
                if known[i] is None:
                    crops[i, j] = cropper.crop(frame, filled[i])
    return crops, filled, detected, set()


def extract_video(record: Any, cache: FaceCache, detector, decode_audio: bool = True,
                  source_meta: dict | None = None) -> dict:
    """Crop, (audio) and write one video's entry; returns its meta.
    Raises BadVideoError (unusable file) or NoFaceError."""
    t0 = time.perf_counter()
    path = record.path
    info = probe(path)
    reuse = (source_meta is not None and source_meta.get("width") == info.width
             and source_meta.get("height") == info.height)
    n_frames = info.n_frames
    for attempt in range(2):
        runs = sample_points(n_frames, cache.frames_per_video, cache.clip_len)
        crops, boxes, detected, missing = _extract_crops(
            path, runs, cache.crop_size, detector, source_meta["boxes"] if reuse else None)
        if not missing:
            break
        # The header promised more frames than decode (truncated or lying container).
        real = count_frames(path)
        if real <= 0 or attempt == 1 or real >= n_frames:
            raise BadVideoError(path, f"frames {min(missing)}.. of {n_frames} do not decode")
        log.info("%s: header says %d frames, %d decode; resampling", path, n_frames, real)
        n_frames = real

    audio: dict = {"present": False, "hop_s": HOP_S, "sample_rate": SAMPLE_RATE, "n_frames": 0}
    mel = None
    if not decode_audio:
        audio["reason"] = "audio extraction disabled"
    elif not record.has_audio:
        audio["reason"] = "dataset has no audio"
    elif not info.has_audio:
        audio["reason"] = "no audio stream"
    else:
        wave = _decode_audio(path)
        if wave is None:
            audio["reason"] = AUDIO_FAILED
        else:
            mel = log_mel(wave)
            audio.update(present=True, n_frames=int(mel.shape[1]))

    p = cache.paths(record.rel)
    try:
        cache.dir.mkdir(parents=True, exist_ok=True)
        for old in p.values():  # temp files a killed run left for this video
            for stale in glob.glob(os.path.join(glob.escape(str(old.parent)),
                                                "." + glob.escape(old.name) + ".tmp-*")):
                Path(stale).unlink(missing_ok=True)
        p["meta"].unlink(missing_ok=True)
        p["skip"].unlink(missing_ok=True)
        if cache.preprocessing != "none":
            from common.preprocess import apply_preprocessing  # torch-free workers unless needed

            crops = apply_preprocessing(crops.reshape(-1, *crops.shape[2:]),
                                        cache.preprocessing).reshape(crops.shape)
        _atomic_write(p["crops"], lambda f: np.save(f, crops))
        if mel is not None:
            _atomic_write(p["mel"], lambda f: np.save(f, mel))
        else:
            p["mel"].unlink(missing_ok=True)
        meta = {
            "version": CACHE_VERSION, "rel": record.rel, "label": int(record.label),
            "frame_indices": [[int(i) for i in run] for run in runs],
            "boxes": [[int(v) for v in b] for b in boxes],
            "detected": detected, "boxes_from": record.source if reuse else None,
            "fps": info.fps, "n_frames": int(n_frames), "width": info.width,
            "height": info.height, "duration_s": info.duration_s, "crop_size": cache.crop_size,
            "clip_len": cache.clip_len, "frames_per_video": cache.frames_per_video,
            "detector": cache.detector, "preprocessing": cache.preprocessing, "audio": audio,
            "seconds": round(time.perf_counter() - t0, 4),
        }
        _write_json(p["meta"], meta)  # the commit point
    except OSError as exc:  # full disk, quota, read-only: the cache's fault, not the video's
        raise CacheWriteError(f"cannot write the face cache in {cache.dir}: "
                              f"{exc.strerror or exc}") from exc
    return meta


# ----------------------------------------------------------------------------- build

@dataclass
class _Job:
    record: Any
    cache: FaceCache
    detector: str
    model_path: str | None
    max_side: int
    decode_audio: bool
    source_meta: dict | None


_DETECTORS: dict = {}


def _detector(name: str, model_path: str | None, max_side: int):
    key = (name, model_path, max_side)
    if key not in _DETECTORS:
        _DETECTORS[key] = make_detector(name, model_path, max_side=max_side)
    return _DETECTORS[key]


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core already; OpenCV threads would oversubscribe
    # Ctrl-C reaches the whole process group: the main process decides when to stop and
    # terminates the pool; a worker dying mid-task would only stall it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_job(job: _Job) -> tuple[str, str, str]:
    """(rel, status, detail): status is done | reused | bad_video | no_face | write_error |
    failed; detail of done/reused is "audio_failed" when the audio track did not decode."""
    rec = job.record
    try:
        det = _detector(job.detector, job.model_path, job.max_side)
        meta = extract_video(rec, job.cache, det, job.decode_audio, job.source_meta)
        audio = "audio_failed" if meta["audio"].get("reason") == AUDIO_FAILED else ""
        return rec.rel, ("reused" if meta["boxes_from"] else "done"), audio
    except CacheWriteError as exc:  # the disk, not the video: no skip marker
        return rec.rel, "write_error", str(exc)
    except (BadVideoError, NoFaceError) as exc:
        reason = "bad_video" if isinstance(exc, BadVideoError) else "no_face"
        try:
            _write_json(job.cache.paths(rec.rel)["skip"],
                        {"reason": reason, "detail": str(exc), "stamp": _file_stamp(rec.path)})
        except OSError:
            pass
        return rec.rel, reason, str(exc)
    except Exception as exc:  # a bug or an I/O error: report it, keep the run going
        return rec.rel, "failed", " ".join(f"{type(exc).__name__}: {exc}".split())


def _results(pool, jobs: list[_Job], stall_s: float):
    """Job results as they come. A worker that dies takes its task with it and Pool would
    wait forever, so a pool silent for stall_s seconds ends the phase: the videos without a
    result are reported failed (never marked, so a rerun retries them)."""
    if pool is None:
        yield from map(_run_job, jobs)
        return
    left = {job.record.rel for job in jobs}
    results = pool.imap_unordered(_run_job, jobs, chunksize=1)
    while left:
        try:
            res = results.next(timeout=stall_s)
        except StopIteration:
            return
        except mp.TimeoutError:
            why = f"no result from the worker pool for {stall_s:g} s (worker crashed or hung)"
            for rel in sorted(left):
                yield rel, "failed", why
            return
        left.discard(res[0])
        yield res


def build_face_cache(records: Iterable[Any], cache: FaceCache, workers: int = 0,
                     shard: tuple[int, int] = (0, 1), decode_audio: bool = True,
                     progress: bool = True, face_model: str | None = None,
                     detect_max_side: int = 640, retry_skipped: bool = False,
                     stall_timeout_s: float = 900.0,
                     should_stop: Callable[[], bool] | None = None) -> dict:
    """Fill the cache for this shard's records; resumable (complete entries are skipped).

    Reals go first so that each fake can reuse its source real's boxes. Returns
    {"total", "done", "reused_boxes", "cached", "skipped": {reason: n}, "failed":
    [(rel, reason)], "audio_failed", "stopped", "seconds", "shard", "cache_dir"}; done
    counts every entry written, audio_failed those of them whose audio track did not
    decode (kept, without audio). `should_stop()` is asked after each video: True ends
    the build early (a SIGTERM), with "stopped" set. A failed write into the cache (full
    disk) raises CacheWriteError: it is not the video's fault, so nothing is marked.
    """
    from tqdm import tqdm

    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise UserError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
    make_detector(cache.detector, face_model, max_side=detect_max_side)  # fail early
    t0 = time.perf_counter()
    mine = list({r.rel: r for r in records if shard_of(r, n) == i}.values())
    summary: dict = {"total": len(mine), "done": 0, "reused_boxes": 0, "cached": 0,
                     "skipped": Counter(), "failed": [], "audio_failed": 0, "stopped": False,
                     "shard": [i, n], "cache_dir": str(cache.dir)}
    phases: list[list[Any]] = [[], []]
    for rec in mine:
        if cache.is_complete(rec.rel):
            summary["cached"] += 1
            continue
        reason = None if retry_skipped else cache.skip_reason(rec)
        if reason:
            summary["skipped"][reason] += 1
            continue
        phases[1 if rec.label == 1 else 0].append(rec)
    pending = len(phases[0]) + len(phases[1])
    if pending:
        try:
            cache.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the face cache folder {cache.dir}: "
                            f"{exc.strerror or exc} (check --cache-dir)") from None
        if not os.access(cache.dir, os.W_OK):
            raise UserError(f"the face cache folder {cache.dir} is not writable (check --cache-dir)")
    pool = None
    if workers > 0 and pending:
        pool = mp.get_context("spawn").Pool(min(workers, pending), initializer=_init_worker)
    bar = tqdm(total=pending, disable=not progress, unit="video", desc=cache.key)
    try:
        for phase in phases:
            if summary["stopped"]:
                break
            jobs = []
            for rec in phase:  # the reals of phase 0 are finished before fakes look them up
                src = cache.meta(rec.source) if rec.label == 1 and rec.source else None
                jobs.append(_Job(rec, cache, cache.detector, face_model, detect_max_side,
                                 decode_audio, src))
            for rel, status, detail in _results(pool, jobs, stall_timeout_s):
                if status in ("done", "reused"):
                    summary["done"] += 1
                    summary["reused_boxes"] += status == "reused"
                    summary["audio_failed"] += detail == "audio_failed"
                elif status == "write_error":
                    raise CacheWriteError(f"{detail} (writing {rel}; the entries already "
                                          "written are kept)")
                elif status == "failed":
                    summary["failed"].append((rel, detail))
                    log.error("failed %s: %s", rel, detail)
                else:
                    summary["skipped"][status] += 1
                    log.warning("skipped %s: %s", rel, detail)
                bar.update(1)
                if should_stop is not None and should_stop():
                    summary["stopped"] = True
                    break
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    summary["skipped"] = dict(summary["skipped"])
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return summary

