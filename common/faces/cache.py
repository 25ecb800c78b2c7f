"""Face cache format and reader: face crops (and log-mel audio) extracted once per video.

Layout under <root>/<dataset>_s<crop>_n<N>_t<T>_<detector>[_<preprocessing>]/, per video
key (rel with "/" turned into "__", extension dropped):
  <key>.npy       uint8 [K, T, S, S, 3] RGB face-view crops, K <= N: one run of T consecutive
                  frames per sample point that shows a face (points without one are dropped)
  <key>.<view>.npy  the same points in another view (common/faces/views.py: context, native), the
                  run's centre frame only ([K, 1, S, S, 3]) unless a clip model reads it; the
                  entry's meta lists its views, and an entry lacking one the cache stores is
                  redone (the face crops of an older entry stay readable meanwhile)
  <key>.mel.npy   float32 [N_MELS, F] log-mel of the whole track (only when audio present)
  <key>.json      metadata, written last: its presence means the entry is complete
  <key>.skip.json the video was skipped (bad_video, no_face, few_faces); not retried while
                  the video file keeps its size and mtime, unless asked to
  <key>.lock      taken (flock) by the process extracting the video; never deleted
  preview.png     a contact sheet of some entries' crops, rows labelled real / fake
Every file is written by common.data.atomic.atomic_write (a temp name unique to the
process, fsync, rename), so a killed run leaves either a complete entry or one without
json, which is redone; no process ever deletes another's files.
Extraction itself is common/faces/extraction.py.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from common.data.atomic import atomic_write
from common.errors import UserError, WriteError
from common.faces.views import STORED_VIEWS, check_view, run_length
from common.recipes import DEFAULTS

CACHE_VERSION = 3  # 2: own detections only, points without a face dropped (K <= N runs);
#                    3: boxes interpolated between agreeing detections (DETECT_STRIDE)
AUDIO_FAILED = "audio track failed to decode"  # meta["audio"]["reason"]; counted in summaries


class NoFaceError(Exception):
    """Too few sampled frames of the video show a face (reason no_face or few_faces)."""

    def __init__(self, message: str, reason: str = "no_face"):
        super().__init__(message)
        self.reason = reason


class CacheWriteError(WriteError):
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
    real and its fakes land in the same shard."""
    key = (record.source if record.label == 1 and record.source else record.rel).encode()
    return int.from_bytes(hashlib.sha1(key).digest()[:8], "big") % n


def file_stamp(path: str) -> list | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def write_file(path: Path, write: Callable[[Any], None]) -> None:
    """The checkpoints' atomic writer; a failure is the cache's (CacheWriteError)."""
    try:
        atomic_write(path, write)
    except (OSError, UserError) as exc:
        raise CacheWriteError(f"cannot write the face cache in {path.parent}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from exc


def write_json(path: Path, obj: dict) -> None:
    write_file(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


class FaceCache:
    """Reader (and target) of one dataset's face cache folder."""

    def __init__(self, root: str | os.PathLike, dataset: str, crop_size: int = DEFAULTS.image_size,
                 frames_per_video: int = DEFAULTS.frames_per_video, clip_len: int = DEFAULTS.clip_len,
                 detector: str = DEFAULTS.face_detector, preprocessing: str = "none",
                 views: tuple[str, ...] = STORED_VIEWS):
        self.root = Path(root)
        # Every view some model uses, for every model: one extraction serves all five.
        self.views = tuple(check_view(v) for v in views)
        self.dataset, self.detector = dataset, detector
        self.crop_size, self.frames_per_video, self.clip_len = crop_size, frames_per_video, clip_len
        # CLAHE / bilateral are deterministic: applied once here, not per sample in every epoch.
        self.preprocessing = preprocessing
        self.key = cache_key(dataset, crop_size, frames_per_video, clip_len, detector, preprocessing)
        self.dir = self.root / self.key

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """Shape of a full entry; a stored entry may have fewer runs (dim 0)."""
        return (self.frames_per_video, self.clip_len, self.crop_size, self.crop_size, 3)

    def paths(self, rel: str) -> dict[str, Path]:
        k = video_key(rel)
        out = {"crops": self.dir / f"{k}.npy", "mel": self.dir / f"{k}.mel.npy",
               "meta": self.dir / f"{k}.json", "skip": self.dir / f"{k}.skip.json"}
        out.update({f"crops_{v}": self.view_path(rel, v) for v in self.views if v != "face"})
        return out

    def run_length(self, view: str = "face") -> int:
        """Frames per sample point stored in a view: clip_len, or 1 (views.run_length)."""
        return run_length(view, self.clip_len)

    def view_path(self, rel: str, view: str = "face") -> Path:
        """The .npy of one view: <key>.npy for face (the format before views), else <key>.<view>.npy."""
        k = video_key(rel)
        return self.dir / (f"{k}.npy" if check_view(view) == "face" else f"{k}.{view}.npy")

    def lock_path(self, rel: str) -> Path:
        return self.dir / f"{video_key(rel)}.lock"

    def meta(self, rel: str) -> dict | None:
        """The entry's json, or None when the entry is not complete (or of an older format)."""
        p = self.paths(rel)
        try:
            meta = json.loads(p["meta"].read_text())
        except (OSError, ValueError):
            return None
        # an entry of an older format (version 1 reused a real's boxes for its fakes) is redone
        if meta.get("version", CACHE_VERSION) != CACHE_VERSION:
            return None
        if not all(self.view_path(rel, v).is_file() for v in meta.get("views", ("face",))):
            return None
        if meta.get("audio", {}).get("present") and not p["mel"].is_file():
            return None
        return meta

    def is_complete(self, rel: str) -> bool:
        """The entry holds every view this cache stores (else extraction redoes it)."""
        meta = self.meta(rel)
        return meta is not None and all(self._has_view(rel, meta, v) for v in self.views)

    def _has_view(self, rel: str, meta: dict, view: str) -> bool:
        return view in meta.get("views", ("face",)) and self.view_path(rel, view).is_file()

    def entry(self, rel: str, view: str = "face") -> tuple[np.ndarray, dict] | None:
        """(read-only memmap uint8 [K, T, S, S, 3] of the view, meta) or None if not
        (completely) cached."""
        meta = self.meta(rel)
        if meta is None or not self._has_view(rel, meta, view):
            return None
        try:
            crops = np.load(self.view_path(rel, view), mmap_mode="r")
        except (OSError, ValueError):
            return None
        ok = (crops.ndim == 5 and crops.shape[1:] == (self.run_length(view), *self.shape[2:])
              and 1 <= crops.shape[0] == len(meta.get("frame_indices", ())))
        return (crops, meta) if ok else None

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
        return marker.get("reason") if marker.get("stamp") == file_stamp(record.path) else None

    def remove_stale_temps(self, rel: str) -> int:
        """Temp files a killed writer left for this video. Call only while holding its lock:
        every writer of these files holds it, so none of them is still being written."""
        n = 0
        for target in self.paths(rel).values():
            prefix = glob.escape(str(target.parent / f".{target.name}."))
            for stale in glob.glob(prefix + "*tmp*"):
                Path(stale).unlink(missing_ok=True)
                n += 1
        return n

    @contextlib.contextmanager
    def locked(self, rel: str, should_stop: Callable[[], bool] | None = None,
               poll_s: float = 0.2) -> Iterator[bool]:
        """Hold the video's lock (flock: released by the kernel if the holder dies, so no
        lock is ever stale). Waits while another process holds it; yields False when
        should_stop() ends the wait first."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path(rel), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if should_stop is not None and should_stop():
                        yield False
                        return
                    time.sleep(poll_s)
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
