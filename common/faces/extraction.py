"""Face extraction: sampling, detection, cropping, and the cache build over the worker pool
(common/faces/pool.py).

One face path for everything: training, validation and `common.ensemble predict` all get
a video's crops from `video_views` (through `extract_video`; every view of common/faces/views.py
from one decode and one set of face boxes), with the settings recorded
in the cache entry and in the checkpoint. Every video is detected on its own frames, fakes
included. A sample point without a face of its own borrows the box of the nearest point
with one only when that point is at most MAX_GAP_S away; otherwise it is dropped. A video
with fewer than half its points usable is skipped (few_faces). Between two detected points
whose faces agree, the points in between take an interpolated box (DETECT_STRIDE).

The command line (`python -m common.extract`) is common/extract.py.
"""
from __future__ import annotations

import logging
import os
import time
from collections import Counter
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from common.data.audio import HOP_S, SAMPLE_RATE, decode_audio as _decode_audio, log_mel
from common.errors import UserError
from common.faces import codec, h264
from common.faces.cache import AUDIO_FAILED, CacheWriteError, FaceCache, NoFaceError, file_stamp, shard_of, write_json
from common.faces.crops import detect_and_crop
from common.faces.detectors import BOX_SCALE, COARSE_SIDE, FIRST_MARGIN, MIN_COARSE_FACE, YUNET_SCORE, make_detector
from common.faces.plan import check_space, sort_records
from common.faces.pool import WorkerDiedError, _Job, _results  # noqa: F401 (WorkerDiedError re-exported)
from common.faces.video import BadVideoError, count_frames, probe, sample_points
from common.faces.views import CONTEXT_SCALE, GRID, STORED_VIEWS, check_view

MAX_GAP_S = 0.5        # a point may borrow a box found at most this far away in time
MIN_USABLE = 0.5       # share of sample points that must show a face
# Detection is most of extraction's cost beyond decoding. The detector runs on every
# DETECT_STRIDE-th sample point (fewer when points are far apart: crops.key_points keeps each
# point within MAX_GAP_S of a detected one); a point in between takes the box interpolated
# from its two neighbours when their boxes agree (IoU >= AGREE_IOU), else it is detected too.
DETECT_STRIDE = 3
AGREE_IOU = 0.7
log = logging.getLogger(__name__)


def face_settings(detector) -> dict:
    """What decides a crop beyond the cache key: recorded in every entry and checkpoint."""
    return {"detector": detector.name, "max_side": getattr(detector, "max_side", None),
            "score_threshold": getattr(detector, "score_threshold", None),
            "box_scale": detector.box_scale, "max_gap_s": MAX_GAP_S, "min_usable": MIN_USABLE,
            "context_scale": CONTEXT_SCALE, "native_grid": GRID,
            "detect_stride": DETECT_STRIDE, "agree_iou": AGREE_IOU,
            **_coarse_settings(getattr(detector, "coarse_side", None))}


def _coarse_settings(coarse_side: int | None) -> dict:
    """YuNet's coarse-to-fine search (faces.YuNetDetector.find), or None when there is none."""
    on = bool(coarse_side)
    return {"coarse_side": coarse_side if on else None,
            "min_coarse_face": MIN_COARSE_FACE if on else None,
            "first_margin": FIRST_MARGIN if on else None}


def recorded_face_settings(detector: str, face_model: Any = None, max_side: int = 640,
                           view: str = "face") -> dict:
    """face_settings() without loading a detector, plus the view the model was trained on:
    the checkpoint's "faces" record (predict serves each student the view recorded here)."""
    coarse = COARSE_SIDE if detector == "yunet" and (not max_side or COARSE_SIDE < max_side) else None
    return {"detector": detector, "face_model": None if face_model in (None, "None") else str(face_model),
            "max_side": max_side if detector != "none" else None,
            "score_threshold": YUNET_SCORE if detector == "yunet" else None,
            "box_scale": 1.0 if detector == "none" else BOX_SCALE, "max_gap_s": MAX_GAP_S,
            "min_usable": MIN_USABLE, "context_scale": CONTEXT_SCALE, "native_grid": GRID,
            "detect_stride": DETECT_STRIDE, "agree_iou": AGREE_IOU,
            **_coarse_settings(coarse), "view": check_view(view)}


# ----------------------------------------------------------------------------- one video

def video_views(path: str, frames_per_video: int, clip_len: int, crop_size: int,
                detector, info=None, views: Sequence[str] = STORED_VIEWS) -> tuple[dict, dict]:
    """Every asked-for view of one video through the one face path -> ({view: uint8
    [K, T or 1, S, S, 3]}, face meta). The views share the decode and the face boxes; a view
    no clip model reads keeps each run's centre frame only (views.run_length).

    K <= frames_per_video: the sample points that show a face (K >= half of them, else
    NoFaceError with reason few_faces, or no_face when none does). Raises BadVideoError."""
    views = tuple(check_view(v) for v in views)
    info = info or probe(path)
    n_frames = info.n_frames
    for attempt in range(2):
        runs = sample_points(n_frames, frames_per_video, clip_len)
        crops, boxes, cut, source, missing = detect_and_crop(
            path, runs, info.fps, crop_size, detector, views, MAX_GAP_S, DETECT_STRIDE, AGREE_IOU)
        if not missing:
            break
        # The header promised more frames than decode (truncated or lying container).
        real = count_frames(path)
        if real <= 0 or attempt == 1 or real >= n_frames:
            raise BadVideoError(path, f"frames {min(missing)}.. of {n_frames} do not decode")
        log.info("%s: header says %d frames, %d decode; resampling", path, n_frames, real)
        n_frames = real
    kept = [i for i, b in enumerate(boxes) if b is not None]
    if "detected" not in source:
        raise NoFaceError("no face found in any sampled frame", "no_face")
    if len(kept) < MIN_USABLE * len(runs):
        raise NoFaceError(f"a face in only {len(kept)} of {len(runs)} sample points", "few_faces")
    meta = {"frame_indices": [[int(v) for v in runs[i]] for i in kept],
            "boxes": [[int(v) for v in boxes[i]] for i in kept],
            "detected": [source[i] == "detected" for i in kept],
            "box_source": [source[i] for i in kept], "points": len(runs), "kept": kept,
            "fps": info.fps, "n_frames": int(n_frames), "width": info.width,
            "height": info.height, "duration_s": info.duration_s, "faces": face_settings(detector),
            "views": list(views),
            "view_boxes": {v: [[int(x) for x in cut[i][v]] for i in kept] for v in views}}
    if len(kept) == len(runs):  # the usual case: no copy of the whole crop array
        return crops, meta
    return {v: np.ascontiguousarray(crops[v][kept]) for v in views}, meta


def video_crops(path: str, frames_per_video: int, clip_len: int, crop_size: int,
                detector, info=None, view: str = "face") -> tuple[np.ndarray, dict]:
    """One view of one video (video_views) -> (uint8 [K, T, S, S, 3], face meta)."""
    crops, meta = video_views(path, frames_per_video, clip_len, crop_size, detector, info, (view,))
    return crops[view], meta


def _audio(record: Any, info, decode_audio: bool) -> tuple[dict, np.ndarray | None]:
    audio: dict = {"present": False, "hop_s": HOP_S, "sample_rate": SAMPLE_RATE, "n_frames": 0}
    if not decode_audio:
        audio["reason"] = "audio extraction disabled"
    elif not record.has_audio:
        audio["reason"] = "dataset has no audio"
    elif not info.has_audio:
        audio["reason"] = "no audio stream"
    else:
        wave = _decode_audio(record.path)
        if wave is None:
            audio["reason"] = AUDIO_FAILED
        else:
            mel = log_mel(wave)
            audio.update(present=True, n_frames=int(mel.shape[1]))
            return audio, mel
    return audio, None


def extract_video(record: Any, cache: FaceCache, detector, decode_audio: bool = True,
                  source_meta: dict | None = None) -> dict:
    """Crop every view the cache stores (video_views), preprocess, decode the audio and write
    one video's entry (FaceCache.write_entry: encoded, checked); returns its meta. Raises
    BadVideoError or NoFaceError. (source_meta is ignored: fakes are detected on their own
    frames; the parameter stays for old callers.)"""
    t0 = time.perf_counter()
    info = probe(record.path)
    crops, face_meta = video_views(record.path, cache.frames_per_video, cache.clip_len,
                                   cache.crop_size, detector, info, cache.views)
    audio, mel = _audio(record, info, decode_audio)
    if cache.preprocessing != "none":
        from common.preprocess import apply_preprocessing  # torch-free workers unless needed

        crops = {v: apply_preprocessing(c.reshape(-1, *c.shape[2:]), cache.preprocessing).reshape(c.shape)
                 for v, c in crops.items()}
    meta = {"rel": record.rel, "label": int(record.label), "source": file_stamp(record.path),
            **face_meta, "boxes_from": None, "crop_size": cache.crop_size,
            "clip_len": cache.clip_len, "frames_per_video": cache.frames_per_video,
            "detector": cache.detector, "preprocessing": cache.preprocessing, "audio": audio,
            "seconds": round(time.perf_counter() - t0, 4)}
    return cache.write_entry(record.rel, crops, mel, meta)


# ----------------------------------------------------------------------------- one job (pool.py runs them)

_DETECTORS: dict = {}


def _detector(name: str, model_path: str | None, max_side: int):
    key = (name, model_path, max_side)
    if key not in _DETECTORS:
        _DETECTORS[key] = make_detector(name, model_path, max_side=max_side)
    return _DETECTORS[key]


def _run_job(job: _Job, stop: Callable[[], bool] | None = None) -> tuple[str, str, str]:
    """(rel, status, detail): status is done | cached | bad_video | no_face | few_faces |
    write_error | failed | stopped (`stop()` ended the wait for another process's lock);
    detail of done is "audio_failed" when the audio did not decode."""
    rec, cache = job.record, job.cache
    try:
        with cache.locked(rec.rel, stop) as got:  # another process may hold it: wait, reuse
            if not got:
                return rec.rel, "stopped", ""
            if cache.is_complete(rec.rel, rec.path):
                return rec.rel, "cached", ""
            cache.remove_stale_temps(rec.rel)
            reason = None if job.retry_skipped else cache.skip_reason(rec)
            if reason:
                return rec.rel, reason, "skipped by another run"
            try:
                det = _detector(job.detector, job.model_path, job.max_side)
                meta = extract_video(rec, cache, det, job.decode_audio)
            except (BadVideoError, NoFaceError) as exc:
                reason = getattr(exc, "reason", None) if isinstance(exc, NoFaceError) else "bad_video"
                detail = exc.reason if isinstance(exc, BadVideoError) else str(exc)
                write_json(cache.paths(rec.rel)["skip"],
                           {"reason": reason, "detail": detail, "stamp": file_stamp(rec.path)})
                return rec.rel, reason, detail
        return rec.rel, "done", ("audio_failed" if meta["audio"].get("reason") == AUDIO_FAILED else "")
    except CacheWriteError as exc:  # the disk, not the video: no skip marker
        return rec.rel, "write_error", str(exc)
    except OSError as exc:  # the lock file could not be made: the cache folder's fault
        return rec.rel, "write_error", f"cannot write the face cache in {cache.dir}: {exc.strerror or exc}"
    except Exception as exc:  # a bug: report it, keep the run going
        return rec.rel, "failed", " ".join(f"{type(exc).__name__}: {exc}".split())


# ----------------------------------------------------------------------------- build

def build_face_cache(records: Iterable[Any], cache: FaceCache, workers: int = 0,
                     shard: tuple[int, int] = (0, 1), decode_audio: bool = True,
                     progress: bool = True, face_model: str | None = None,
                     detect_max_side: int = 640, retry_skipped: bool = False,
                     should_stop: Callable[[], bool] | None = None, preview: bool = True) -> dict:
    """Fill the cache for this shard's records; resumable, and safe with other processes
    filling the same cache (each video is extracted once, under its lock).

    Returns {"total", "done", "cached", "skipped": {reason: n}, "failed": [(rel, reason)],
    "audio_failed", "repaired": [rel] (damaged entries redone), "outdated", "changed"
    (plan.sort_records), "plan" (videos, bytes, free), "stopped", "seconds", "shard",
    "cache_dir"}. Refuses (CacheSpaceError) when the estimate will not fit on the disk.
    `should_stop()` is polled while waiting: True ends the build within a fraction of a
    second (a SIGTERM), with "stopped" set. A failed write into the cache raises CacheWriteError; a worker dying
    twice on one video raises WorkerDiedError (a CacheWriteError).
    """
    from tqdm import tqdm

    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise UserError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
    make_detector(cache.detector, face_model, max_side=detect_max_side)  # fail early (exit 2)
    if any(codec.codec_of(v)[0] == "h264" for v in cache.views):
        h264.require_encoder()
    t0 = time.perf_counter()
    summary, mine, pending, missing = plan_extraction(records, cache, shard, retry_skipped)
    _prepare_cache(cache, pending, missing)
    model = face_model if cache.detector == "yunet" else None
    jobs = [_Job(rec, cache, cache.detector, None if model is None else str(model), detect_max_side,
                 decode_audio, retry_skipped) for rec in pending]
    stop = should_stop or (lambda: False)
    bar = tqdm(total=len(jobs), disable=not progress, unit="video", desc=cache.key)
    _run_jobs(jobs, workers, stop, summary, bar)
    if preview and summary["done"] and not summary["stopped"]:
        _preview(cache, mine)
    summary["skipped"] = dict(summary["skipped"])
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return summary


def plan_extraction(records: Iterable[Any], cache: FaceCache, shard: tuple[int, int] = (0, 1),
                    retry_skipped: bool = False) -> tuple[dict, list, list, list]:
    """(summary so far, this shard's records, pending, missing), the disk estimate in
    summary["plan"]; writes nothing. CacheSpaceError when the pending ones will not fit."""
    i, n = shard
    mine = list({r.rel: r for r in records if shard_of(r, n) == i}.values())
    summary: dict = {"total": len(mine), "done": 0, "reused_boxes": 0, "cached": 0,
                     "skipped": Counter(), "failed": [], "audio_failed": 0, "repaired": [],
                     "stopped": False, "shard": [i, n], "cache_dir": str(cache.dir)}
    pending, missing = sort_records(mine, cache, retry_skipped, summary)
    summary["plan"] = check_space(cache, pending)
    return summary, mine, pending, missing


def _prepare_cache(cache: FaceCache, pending: list, missing: list) -> None:
    """The cache folder made and checked writable when there is anything to write (a bad
    --cache-dir is the user's error, exit 2), and a skip marker for each missing record."""
    if pending or missing:
        try:
            cache.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the face cache folder {cache.dir}: "
                            f"{exc.strerror or exc} (check --cache-dir)") from None
        if not os.access(cache.dir, os.W_OK):
            raise UserError(f"the face cache folder {cache.dir} is not writable (check --cache-dir)")
    for rec in missing:  # named in skipped.txt; retried once the file appears (stamp None)
        write_json(cache.paths(rec.rel)["skip"], {"reason": "missing", "stamp": None,
                                                   "detail": "listed in the dataset but not on disk"})


def _run_jobs(jobs: list[_Job], workers: int, stop: Callable[[], bool], summary: dict, bar) -> None:
    """Every job through the pool, its result tallied in summary; ends early when stop() says
    so ("stopped" set when jobs were left). A write error raises CacheWriteError."""
    try:
        for rel, status, detail in _results(_run_job, jobs, workers, stop):
            if status == "stopped":
                break
            _tally(summary, rel, status, detail)
            bar.update(1)
            if stop():
                break
        summary["stopped"] = bool(stop()) and bar.n < len(jobs)
    finally:
        bar.close()


def _tally(summary: dict, rel: str, status: str, detail: str) -> None:
    """One job's result (_run_job) into the summary."""
    if status == "done":
        summary["done"] += 1
        summary["audio_failed"] += detail == "audio_failed"
    elif status == "cached":
        summary["cached"] += 1
    elif status == "write_error":
        raise CacheWriteError(f"{detail} (writing {rel}; the entries already written are kept)")
    elif status == "failed":
        summary["failed"].append((rel, detail))
        log.error("failed %s: %s", rel, detail)
    else:
        summary["skipped"][status] += 1
        log.warning("skipped %s: %s", rel, detail)


def _preview(cache: FaceCache, mine: list) -> None:
    from common.faces.preview import write_preview

    try:
        write_preview(cache, mine)
    except (OSError, CacheWriteError, ValueError) as exc:  # a nicety: never fail the run
        log.warning("no crop preview: %s", exc)
