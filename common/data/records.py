"""The record every dataset indexer yields, and the account of what an indexer left out.

`VideoRecord` is one video with its label, group and split; `IndexReport` collects the
videos skipped and why; `summarize` and `_finish` count and log a finished index.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

# Every indexer logs under the public module's name, as before the split into modules,
# so log filters (and tests) that select "common.data.datasets" still see all of them.
logger = logging.getLogger("common.data.datasets")

SPLITS = ("train", "val", "test")
_MAX_SKIP_LOGS = 20  # individual skip lines; the rest only show up in the final count


@dataclass(frozen=True)
class VideoRecord:
    path: str                 # absolute path of the mp4
    rel: str                  # path relative to the dataset root, '/'-separated (the video id)
    label: int                # 1 = fake, 0 = real
    group: str                # identity / source footage it derives from
    split: str                # "train" | "val" | "test"
    has_audio: bool           # whether the layout says it carries an audio track
    source: str | None = None  # rel of the real video a fake was made from
    chunk: int | None = None   # DFDC part number


@dataclass
class IndexReport:
    """What an indexer left out, and why. Pass one in as `report=` to read it back."""

    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def skip(self, path: str | Path, reason: str) -> None:
        self.skipped.append((str(path), reason))
        if len(self.skipped) <= _MAX_SKIP_LOGS:
            logger.warning("skipping %s: %s", path, reason)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)


def summarize(records: Iterable[VideoRecord], report: IndexReport | None = None) -> dict:
    """Counts per split and label: {"total", "train": {"real", "fake"}, ..., "skipped"}."""
    out: dict = {"total": 0, **{split: {"real": 0, "fake": 0} for split in SPLITS}}
    for r in records:
        out.setdefault(r.split, {"real": 0, "fake": 0})[("real", "fake")[r.label]] += 1
        out["total"] += 1
    if report is not None:
        out["skipped"] = report.n_skipped
    return out


def _finish(name: str, root: Path, records: list[VideoRecord], report: IndexReport) -> None:
    s = summarize(records)
    logger.info("%s %s: %d videos (%s)", name, root, s["total"],
                ", ".join(f"{k} {s[k]['real']} real / {s[k]['fake']} fake" for k in SPLITS))
    if report.n_skipped:
        logger.warning("%s: %d videos skipped in all (reasons for the first %d logged above)",
                       name, report.n_skipped, min(report.n_skipped, _MAX_SKIP_LOGS))
