"""Before an extraction writes anything: which videos to do, and whether they fit on disk.

The dataset's index decides, not the cache: a cached entry counts only while its video is
listed today with the size and mtime it had when extracted (FaceCache.state). A listed video
that is not on disk is "missing" even when the cache still holds it; an entry that is
damaged, of an older format or of a since-changed video is redone and counted.
The disk estimate is the format's measured bytes per entry (common/faces/codec.py) times the
videos still to do; a run that clearly cannot fit in the cache filesystem's free space is
refused before it starts (CacheSpaceError, exit 3).
"""
from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from common.faces import codec
from common.faces.cache import CACHE_VERSION, CacheWriteError, FaceCache

AUDIO_S = 10.0  # the log-mel's length assumed per video with audio (DFDC's clips are 10 s)
log = logging.getLogger("common.faces.extraction")


class CacheSpaceError(CacheWriteError):
    """The videos still to extract will not fit in the cache filesystem's free space."""


def sort_records(mine: list, cache: FaceCache, retry_skipped: bool,
                 summary: dict) -> tuple[list, list]:
    """This shard's records -> (pending: to extract, missing: listed but not on disk); those
    already cached or skipped are only counted. Redone entries are counted in summary:
    "repaired" (their rels: damaged entries), "outdated" (older format), "changed" (the
    video changed since it was extracted)."""
    pending, missing = [], []
    redo: Counter = Counter()
    for rec in mine:
        if not os.path.exists(rec.path):  # listed by the dataset, not on disk: cached or not
            summary["skipped"]["missing"] += 1
            missing.append(rec)
            continue
        state = cache.state(rec.rel, rec.path)
        if state == "ok":
            summary["cached"] += 1
            continue
        redo[state] += 1
        if state == "damaged":
            summary["repaired"].append(rec.rel)
            pending.append(rec)  # redone even if a skip marker says otherwise: it had crops
            continue
        reason = None if retry_skipped else cache.skip_reason(rec)
        if reason:
            summary["skipped"][reason] += 1
            continue
        pending.append(rec)
    summary["outdated"], summary["changed"] = redo["old"], redo["stale"]
    if redo["old"]:
        log.warning("the face cache in %s holds %d entries of an older format; re-extracting them "
                    "(format version %d: compressed and checked)", cache.dir, redo["old"], CACHE_VERSION)
    if summary["repaired"]:
        log.warning("re-extracting %d damaged face cache entries: %s", len(summary["repaired"]),
                    ", ".join(summary["repaired"]))
    return pending, missing


def estimate_bytes(cache: FaceCache, pending: list[Any]) -> int:
    """Bytes the pending videos' entries are expected to take (codec.estimate_entry_bytes)."""
    with_audio = sum(bool(getattr(r, "has_audio", False)) for r in pending)
    one = codec.estimate_entry_bytes(cache.crop_size, cache.frames_per_video, cache.clip_len,
                                     cache.views, preprocessing=cache.preprocessing)
    return one * len(pending) + int(codec.MEL_BYTES_PER_S * AUDIO_S) * with_audio


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes (for this user) on the filesystem that holds `path` or its nearest
    existing parent."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def check_space(cache: FaceCache, pending: list[Any]) -> dict:
    """{"videos", "bytes", "free"}: the estimate, logged; CacheSpaceError when it is larger
    than the free space of the cache's filesystem."""
    need = estimate_bytes(cache, pending)
    free = free_bytes(cache.dir)
    plan = {"videos": len(pending), "bytes": need, "free": free}
    if need > free:  # the one line of a refusal (it holds the estimate)
        raise CacheSpaceError(f"not enough disk for the face cache: {describe(plan)} "
                              "(free some space or point --cache-dir elsewhere)")
    if pending:
        log.info("face cache %s: %s", cache.key, describe(plan))
    return plan


def describe(plan: dict) -> str:
    """One line: videos to extract, estimated bytes, free bytes."""
    per = plan["bytes"] / plan["videos"] if plan["videos"] else 0
    return (f"{plan['videos']} videos to extract, about {_size(plan['bytes'])} "
            f"({_size(per)} per video), {_size(plan['free'])} free")


def _size(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1e3:.0f} kB"
