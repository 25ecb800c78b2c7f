"""Face cache format and reader: face crops (and log-mel audio) extracted once per video.

Layout under <root>/<dataset>_s<crop>_n<N>_t<T>_<detector>[_<preprocessing>]/, per video
key (rel with "/" turned into "__", extension dropped):
  <key>.<view>.frames  the crops of one view (common/faces/views.py: face, context, native)
                  in that view's codec (common/faces/codec.py), in a checked container:
                  K <= N sample points that show a face, each a run of T consecutive frames
                  for a view a clip model reads, else the run's centre frame
  <key>.mel.bin   [N_MELS, F] log-mel of the whole track, float16 (only when audio present)
  <key>.json      metadata, written last: its presence means the entry is complete. It records
                  each file's size and crc32, the source video's size and mtime (an entry is
                  used only while the dataset's video still has them) and a crc32 of itself
  <key>.damaged.json  a reader found the entry truncated or corrupt: the next extraction
                  redoes it (and counts and names it)
  <key>.skip.json the video was skipped (bad_video, no_face, few_faces); not retried while
                  the video file keeps its size and mtime, unless asked to
  <key>.lock      taken (flock) by the process extracting the video; never deleted
  preview.png     a contact sheet of some entries' crops, rows labelled real / fake
Every file is written by common.data.atomic.atomic_write (a temp name unique to the
process, then a rename); only the json is fsynced: a data file a crash lost or cut short
no longer matches the size and crc32 the json holds, so the entry is redone. A killed run
leaves either a complete entry or one without json, which is redone; no process ever
deletes another's files. Entries of an older version (raw .npy arrays) are redone, their
files removed. Extraction itself is common/faces/extraction.py.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from common.data.atomic import atomic_write
from common.errors import UserError, WriteError
from common.faces import codec
from common.faces.views import STORED_VIEWS, check_view, run_length
from common.recipes import DEFAULTS

CACHE_VERSION = 5  # 2: own detections only, points without a face dropped (K <= N runs);
#                    3: boxes interpolated between agreeing detections (DETECT_STRIDE);
#                    4: compressed views, sizes and checksums, the source's stamp;
#                    5: the face view's runs coded as H.264 (common/faces/h264.py),
#                       the log-mel as float16
LEGACY_SUFFIXES = (".npy", ".context.npy", ".native.npy", ".mel.npy")  # version <= 3 files
AUDIO_FAILED = "audio track failed to decode"  # meta["audio"]["reason"]; counted in summaries


class NoFaceError(Exception):
    """Too few sampled frames of the video show a face (reason no_face or few_faces)."""

    def __init__(self, message: str, reason: str = "no_face"):
        super().__init__(message)
        self.reason = reason


class CacheWriteError(WriteError):
    """Writing into the cache failed (full disk, quota, read-only folder). Not the video's
    fault: never recorded as a skipped video; the run stops, finished entries stay valid."""


class CacheDamagedError(UserError):
    """A reader found a cache entry truncated or corrupt. The entry is marked, and the next
    `common.extract` or stage run re-extracts it."""

    def __str__(self) -> str:
        # Re-raised from a DataLoader worker, the message is the worker's whole traceback:
        # its last line is ours.
        text = super().__str__().strip()
        return text.splitlines()[-1].split("CacheDamagedError: ", 1)[-1] if text else text


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


def write_file(path: Path, write: Callable[[Any], None], sync: bool = True) -> None:
    """The checkpoints' atomic writer; a failure is the cache's (CacheWriteError)."""
    try:
        atomic_write(path, write, sync=sync)
    except (OSError, UserError) as exc:
        raise CacheWriteError(f"cannot write the face cache in {path.parent}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from exc


def write_json(path: Path, obj: dict) -> None:
    write_file(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


def _write_bytes(f: Any, blob: bytes) -> None:
    """Every data file of an entry is written here (one name for tests to fault)."""
    f.write(blob)


def _self_check(meta: dict) -> int:
    """crc32 of the meta without its "check": a json changed in any value fails it."""
    body = {k: v for k, v in meta.items() if k != "check"}
    return zlib.crc32(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


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
        out = {"mel": self.dir / f"{k}.mel.bin", "meta": self.dir / f"{k}.json",
               "skip": self.dir / f"{k}.skip.json", "damaged": self.dir / f"{k}.damaged.json"}
        out.update({f"view_{v}": self.view_path(rel, v) for v in self.views})
        return out

    def legacy_paths(self, rel: str) -> list[Path]:
        """The files of a version <= 3 entry (raw .npy): removed when the entry is redone."""
        return [self.dir / f"{video_key(rel)}{suffix}" for suffix in LEGACY_SUFFIXES]

    def run_length(self, view: str = "face") -> int:
        """Frames per sample point stored in a view: clip_len, or 1 (views.run_length)."""
        return run_length(view, self.clip_len)

    def view_path(self, rel: str, view: str = "face") -> Path:
        return self.dir / f"{video_key(rel)}.{check_view(view)}.frames"

    def lock_path(self, rel: str) -> Path:
        return self.dir / f"{video_key(rel)}.lock"

    def state(self, rel: str, source: str | None = None) -> str:
        """ok | absent (no json) | old (an older format) | damaged (a file truncated or
        changed, the json itself corrupt, or a reader marked it) | stale (the source video
        at `source` is gone or changed since) | partial (lacks a view this cache stores)."""
        meta, why = self._load_meta(rel, source)
        if meta is None:
            return why
        return "ok" if all(v in meta["views"] for v in self.views) else "partial"

    def meta(self, rel: str, source: str | None = None) -> dict | None:
        """The entry's json when the entry is whole (every file as recorded) and, given the
        source video's path, still of that video; else None."""
        return self._load_meta(rel, source)[0]

    def _load_meta(self, rel: str, source: str | None) -> tuple[dict | None, str]:
        p = self.paths(rel)
        try:
            text = p["meta"].read_text()
        except OSError:
            return None, "absent"
        try:
            meta = json.loads(text)
            version = meta.get("version")
        except (ValueError, AttributeError):
            return None, "damaged"
        # older versions: raw arrays (1 also reused a real's boxes for its fakes)
        if version != CACHE_VERSION:
            return None, "old"
        if meta.get("check") != _self_check(meta) or p["damaged"].exists():
            return None, "damaged"
        for name, check in meta["files"].items():
            stamp = file_stamp(str(self.dir / name))
            if stamp is None or stamp[0] != check["size"]:
                return None, "damaged"
        if source is not None:
            stamp = file_stamp(source)
            if stamp is None or stamp != meta["source"]:
                return None, "stale"
        return meta, "ok"

    def is_complete(self, rel: str, source: str | None = None) -> bool:
        """The entry is whole, holds every view this cache stores and (given `source`) is
        of that video as it is now; else extraction redoes it."""
        return self.state(rel, source) == "ok"

    def write_entry(self, rel: str, crops: dict[str, np.ndarray], mel: np.ndarray | None,
                    meta: dict) -> dict:
        """Encode and write one video's views (and mel), then its json (the commit point),
        with each file's size and crc32. Call only while holding the video's lock."""
        p = self.paths(rel)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            for old in (p["meta"], p["skip"], p["damaged"], *self.legacy_paths(rel)):
                old.unlink(missing_ok=True)  # ours to redo: the caller holds the video's lock
        except OSError as exc:
            raise CacheWriteError(f"cannot write the face cache in {self.dir}: "
                                  f"{exc.strerror or exc}") from exc
        files = {}
        blobs = {self.view_path(rel, v): codec.encode_view(c, v, self.preprocessing) for v, c in crops.items()}
        if mel is not None:
            blobs[p["mel"]] = codec.encode_array(mel)
        for path, blob in blobs.items():
            write_file(path, lambda f, b=blob: _write_bytes(f, b), sync=False)
            files[path.name] = {"size": len(blob), "crc32": zlib.crc32(blob)}
        meta = {**meta, "version": CACHE_VERSION, "views": list(crops), "files": files,
                "codecs": {v: list(codec.codec_of(v, self.preprocessing)) for v in crops}}
        meta["check"] = _self_check(meta)
        write_json(p["meta"], meta)
        return meta

    def entry(self, rel: str, view: str = "face", source: str | None = None) -> tuple[np.ndarray, dict] | None:
        """(uint8 [K, T, S, S, 3] of the view, decoded, meta) or None if not (completely,
        soundly) cached."""
        meta = self.meta(rel, source)
        if meta is None or view not in meta["views"]:
            return None
        k, t = len(meta["frame_indices"]), self.run_length(view)
        try:
            path = self.view_path(rel, view)
            runs = [codec.read_frames(path, view, i, t, 0, t, side=self.crop_size) for i in range(k)]
        except (OSError, ValueError):
            return None
        return np.stack(runs), meta

    def read_frames(self, rel: str, view: str, point: int, start: int, count: int,
                    out: np.ndarray | None = None) -> np.ndarray:
        """uint8 [count, S, S, 3]: frames start.. of sample point `point` in a view, checked
        and decoded (the one decoder of training, validation, evaluate and predict). A
        truncated or corrupt entry is marked for re-extraction and raises CacheDamagedError.
        `out`: a uint8 [count, S, S, 3] array to decode into (and return)."""
        try:
            return codec.read_frames(self.view_path(rel, view), view, point, self.run_length(view),
                                     start, count, out, side=self.crop_size)
        except (OSError, ValueError) as exc:
            raise self._damaged(rel, exc) from None

    def read_mel(self, rel: str) -> np.ndarray:
        """float32 [N_MELS, F]: the entry's log-mel, checked (CacheDamagedError as read_frames)."""
        try:
            return codec.read_array(self.paths(rel)["mel"])
        except (OSError, ValueError) as exc:
            raise self._damaged(rel, exc) from None

    def mel(self, rel: str) -> np.ndarray | None:
        """float32 [N_MELS, F] log-mel of the video, or None when it has no usable audio."""
        meta = self.meta(rel)
        if meta is None or not meta["audio"]["present"]:
            return None
        return self.read_mel(rel)

    def verify(self, rel: str) -> bool:
        """Every file of a whole entry read back against the crc32 its json recorded; a
        mismatch marks the entry damaged. False when it is not whole."""
        meta = self.meta(rel)
        if meta is None:
            return False
        for name, check in meta["files"].items():
            if codec.file_check(self.dir / name) != check:
                self._damaged(rel, OSError(f"{name}: checksum differs"))
                return False
        return True

    def _damaged(self, rel: str, exc: Exception) -> CacheDamagedError:
        """Mark the entry (best effort: a read-only cache still gets the error) -> the error."""
        why = " ".join(str(exc).split())
        try:
            write_json(self.paths(rel)["damaged"], {"reason": why})
        except CacheWriteError:
            pass
        return CacheDamagedError(f"face cache entry of {rel} is damaged ({why}); it is marked, and "
                                 "the next `common.extract` or stage run re-extracts it")

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
        for target in [*self.paths(rel).values(), *self.legacy_paths(rel)]:
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
