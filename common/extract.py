"""`python -m common.extract`: detect, crop and cache the faces (and audio) of a dataset.

  python -m common.extract --dataset celebdf --data PATH [--cache-dir cache] [--workers 4]
      [--shard I/N] [--face-detector yunet|haar|none] [--face-model PATH] ...

  python -m common.extract ... --dry-run   # how many videos are left, the disk they need

Before extracting it prints the estimated disk the run will write (the format's measured
bytes per video x the videos left) and refuses when that exceeds the free space.
Exit codes: 0 done; 1 some videos failed (retried next run); 2 a bad flag, path or model;
3 the cache could not be written or will not fit, a worker died twice on one video, or
SIGTERM stopped it; 130 Ctrl-C stopped it (one line; finished videos stay cached).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections import Counter
from typing import Sequence

from common.errors import UserError
from common.faces.cache import CacheWriteError, FaceCache
from common.faces.detectors import DETECTORS, make_detector
from common.faces.extraction import build_face_cache
from common.recipes import DEFAULTS


_INTERRUPTED = ("interrupted: extraction stopped by Ctrl-C; the videos finished so far stay cached, "
                "rerun the same command to continue")


def format_summary(summary: dict, cache) -> str:
    """The CLI's report of a build_face_cache summary."""
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(summary["skipped"].items())) or "none"
    repaired = summary.get("repaired", [])
    lines = [f"{cache.dir}: {summary['done']} extracted, {summary['cached']} already cached, "
             f"skipped: {skipped}, failed: {len(summary['failed'])}, repaired: {len(repaired)}, "
             f"{summary['seconds']:.1f} s (shard {summary['shard'][0]}/{summary['shard'][1]})"
             + (" -- stopped early" if summary["stopped"] else "")]
    lines += [f"  failed {rel}: {why}" for rel, why in summary["failed"]]
    lines += [f"  repaired {rel}: the entry was damaged, re-extracted" for rel in repaired]
    return "\n".join(lines)


def _parse_shard(text: str) -> tuple[int, int]:
    parts = text.split("/")
    try:
        i, n = int(parts[0]), int(parts[1])
        if len(parts) != 2 or n < 1 or not 0 <= i < n:
            raise ValueError
    except (ValueError, IndexError):
        raise UserError(f"--shard must be I/N with 0 <= I < N (e.g. 0/4), got {text!r}") from None
    return i, n


def _preprocessing(choice: str, dataset: str) -> str:
    """The cache's preprocessing: the one the dataset's training stage reads, unless told."""
    if choice != "stage":
        return choice
    from common.recipes import RECIPES

    return next(r.preprocessing for r in RECIPES.values() if r.dataset == dataset)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m common.extract", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Detect, crop and cache the faces (and log-mel audio) of a dataset.")
    a = parser.add_argument
    a("--dataset", required=True, choices=("faceforensics", "celebdf", "dfdc"))
    a("--data", required=True, help="dataset root, official layout")
    a("--cache-dir", default="cache")
    a("--image-size", type=int, default=DEFAULTS.image_size)
    a("--frames-per-video", type=int, default=DEFAULTS.frames_per_video)
    a("--clip-len", type=int, default=DEFAULTS.clip_len)
    a("--face-detector", default=DEFAULTS.face_detector, choices=DETECTORS)
    a("--face-model", default=None, help="YuNet ONNX model (default: the per-user model cache)")
    a("--workers", type=int, default=min(4, os.cpu_count() or 1),
      help="worker processes (0 = in this process)")
    a("--shard", default="0/1", help="I/N: this machine extracts shard I of N (videos split by source)")
    a("--preprocessing", choices=("stage", "none", "clahe", "clahe_bilateral"), default="stage",
      help="stored with the crops; 'stage' = what the dataset's training stage uses "
           "(FF++ none, Celeb-DF clahe, DFDC clahe_bilateral)")
    a("--no-audio", action="store_true", help="skip the log-mel extraction")
    a("--retry-skipped", action="store_true",
      help="try again the videos the cache marked skipped (e.g. after changing the detector model)")
    a("--no-progress", action="store_true")
    a("--dry-run", action="store_true",
      help="print how many videos are left to extract and the disk they need, then exit")
    a("--verify", action="store_true",
      help="read every cached entry back against its checksums first (damaged ones are redone)")
    return parser


def dry_run(records, cache, shard: tuple[int, int], retry_skipped: bool) -> int:
    """The plan of a run, printed; exit 0 when it fits on the disk, else 3."""
    from common.faces.cache import shard_of
    from common.faces.plan import CacheSpaceError, describe, estimate_bytes, free_bytes, sort_records

    mine = list({r.rel: r for r in records if shard_of(r, shard[1]) == shard[0]}.values())
    summary = {"cached": 0, "skipped": Counter(), "repaired": []}
    pending, _ = sort_records(mine, cache, retry_skipped, summary)
    plan = {"videos": len(pending), "bytes": estimate_bytes(cache, pending), "free": free_bytes(cache.dir)}
    fits = plan["bytes"] <= plan["free"]
    print(f"{cache.dir}: {summary['cached']} of {len(mine)} videos cached; {describe(plan)}"
          + ("" if fits else f" -- {CacheSpaceError.__name__}: it will not fit"))
    return 0 if fits else 3


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from common.data.datasets import index_dataset

    stopped = {"flag": False, "signal": None}

    def on_signal(signum, frame):
        if stopped["signal"] == signal.SIGINT == signum:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        stopped["flag"], stopped["signal"] = True, signum

    # Ctrl-C and SIGTERM: the running videos finish or are dropped whole (never half-written).
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        shard = _parse_shard(args.shard)
        for flag, value in (("--image-size", args.image_size), ("--clip-len", args.clip_len),
                            ("--frames-per-video", args.frames_per_video)):
            if value < 1:
                raise UserError(f"{flag} must be >= 1, got {value}")
        make_detector(args.face_detector, args.face_model)  # fail on a bad model before indexing
        records = index_dataset(args.dataset, args.data)
        cache = FaceCache(args.cache_dir, args.dataset, args.image_size, args.frames_per_video,
                          args.clip_len, args.face_detector,
                          _preprocessing(args.preprocessing, args.dataset))
        if args.dry_run:
            return dry_run(records, cache, shard, args.retry_skipped)
        if args.verify:
            bad = [r.rel for r in records if cache.meta(r.rel) is not None and not cache.verify(r.rel)]
            print(f"verified the cached entries: {len(bad)} damaged" + (f" ({', '.join(bad)})" if bad else ""))
        summary = build_face_cache(records, cache, workers=args.workers, shard=shard,
                                   decode_audio=not args.no_audio, progress=not args.no_progress,
                                   face_model=args.face_model,
                                   retry_skipped=args.retry_skipped, should_stop=lambda: stopped["flag"])
    except CacheWriteError as exc:  # a full disk, or WorkerDiedError (a worker died twice)
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_INTERRUPTED, file=sys.stderr)
        return 130
    finally:
        for sig, handler in previous.items():  # in-process callers (tests) get theirs back
            signal.signal(sig, handler)
    if summary["stopped"] and stopped["signal"] == signal.SIGINT:
        print(_INTERRUPTED, file=sys.stderr)
        return 130
    print(format_summary(summary, cache))
    if summary["stopped"]:
        return 3
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
