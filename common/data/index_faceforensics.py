"""Index the official FaceForensics++ tree (and optionally DeepFakeDetection) into
`VideoRecord`s, split by the official pair lists or a leak-free fallback."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Iterable

from common.data.group_splits import _components, _fallback_splits
from common.data.layout import _check_root, _mp4s, _rel
from common.data.records import SPLITS, IndexReport, VideoRecord, _finish
from common.errors import DatasetLayoutError

logger = logging.getLogger("common.data.datasets")  # see common.data.records

DEFAULT_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter")
_FF_EXPECT = "expected a FaceForensics++ root with original_sequences/ and manipulated_sequences/"


def _read_ff_splits(folder: Path, explicit: bool) -> dict[str, list[tuple[str, str]]] | None:
    files = {s: folder / f"{s}.json" for s in SPLITS}
    present = [s for s, f in files.items() if f.is_file()]
    if not present and not explicit:
        return None
    if len(present) < 3:
        missing = ", ".join(str(files[s]) for s in SPLITS if s not in present)
        raise DatasetLayoutError(f"{folder}: split files missing: {missing}")
    out = {}
    for split, f in files.items():
        try:
            pairs = json.loads(f.read_text(encoding="utf-8"))
            if not isinstance(pairs, list) or not all(
                    isinstance(p, list) and len(p) == 2 and all(isinstance(i, str) for i in p)
                    for p in pairs):
                raise ValueError("not a JSON array of two-string pairs")
        except (OSError, ValueError) as e:
            raise DatasetLayoutError(f"{f}: unreadable split file ({e})") from None
        out[split] = [tuple(p) for p in pairs]
    return out


def index_faceforensics(root: str | Path, compression: str = "c23",
                        methods: Iterable[str] = DEFAULT_METHODS,
                        splits_dir: str | Path | None = None, include_dfd: bool = False,
                        report: IndexReport | None = None, use_split_files: bool = True) -> list[VideoRecord]:
    """`use_split_files=False` ignores split files and takes the fallback split: how a run that
    found none is re-indexed after official files were added (common.evaluate's overlap check)."""
    root = _check_root(root, ["original_sequences", "manipulated_sequences"], _FF_EXPECT)
    report = report if report is not None else IndexReport()
    yt = root / "original_sequences" / "youtube"
    real_dir = yt / compression / "videos"
    if not real_dir.is_dir():
        found = sorted(p.name for p in yt.iterdir() if p.is_dir()) if yt.is_dir() else []
        raise DatasetLayoutError(f"{real_dir}: missing (compressions found: "
                                 f"{', '.join(found) or 'none'}); pick one with --compression")
    methods = list(methods)
    used = [m for m in methods if (root / "manipulated_sequences" / m / compression / "videos").is_dir()]
    if len(used) < len(methods):
        logger.warning("FaceForensics++: no %s videos for %s under %s; using %s", compression,
                       ", ".join(m for m in methods if m not in used),
                       root / "manipulated_sequences", ", ".join(used) or "nothing")
    if not used:
        raise DatasetLayoutError(f"{root / 'manipulated_sequences'}: none of {', '.join(methods)} "
                                 f"has a {compression}/videos folder")

    # (rel, path, label, target id, source id or None)
    items: list[tuple[str, Path, int, str, str | None]] = []
    for p in _mp4s(real_dir):
        items.append((_rel(p, root), p, 0, p.stem, None))
    for m in used:
        for p in _mp4s(root / "manipulated_sequences" / m / compression / "videos"):
            ids = p.stem.split("_")
            if len(ids) != 2 or not all(ids):
                report.skip(p, "name is not <target>_<source>.mp4")
                continue
            items.append((_rel(p, root), p, 1, ids[0], ids[1]))

    official = _read_ff_splits(Path(splits_dir) if splits_dir is not None else root / "splits",
                               explicit=splits_dir is not None) if use_split_files else None
    items += _ff_missing(items, root, official, used, compression, report)
    split_of, group_of = _ff_assign(items, root, splits_dir, official, report)
    real_rel = {t: rel for rel, _, label, t, _ in items if label == 0}
    records = [VideoRecord(str(p), rel, label, group_of[t], split_of[rel], False,
                           real_rel.get(t) if label else None, None)
               for rel, p, label, t, _ in items if rel in split_of]
    if include_dfd:
        records += _index_dfd(root, compression, report)
    _finish("FaceForensics++", root, records, report)
    return records


def _ff_missing(items, root: Path, official: dict | None, used: list[str], compression: str,
                report: IndexReport) -> list:
    """Videos the official split files list (each id's original, and both fakes of each pair
    for every method in use) that are not on disk: records with their expected path, which
    extraction marks `missing` (named in skipped.txt, counted as unusable)."""
    if official is None:
        return []
    have = {rel for rel, *_ in items}
    expected: dict[str, tuple] = {}
    for pairs in official.values():
        for a, b in pairs:
            for i in (a, b):
                rel = f"original_sequences/youtube/{compression}/videos/{i}.mp4"
                expected.setdefault(rel, (0, i, None))
            for m in used:
                for t, src in ((a, b), (b, a)):
                    rel = f"manipulated_sequences/{m}/{compression}/videos/{t}_{src}.mp4"
                    expected.setdefault(rel, (1, t, src))
    out = []
    for rel, (label, t, src) in sorted(expected.items()):
        if rel not in have:
            report.skip(root / rel, "listed in the split files but missing on disk")
            out.append((rel, root / rel, label, t, src))
    return out


def _ff_assign(items, root: Path, splits_dir, official: dict | None, report: IndexReport):
    """Split per video rel and group per id, from the official pairs or a leak-free fallback."""
    folder = Path(splits_dir) if splits_dir is not None else root / "splits"
    split_of: dict[str, str] = {}
    group_of: dict[str, str] = {}
    if official is not None:
        id_split: dict[str, str] = {}
        for split, pairs in official.items():
            for pair in pairs:
                for i in pair:
                    if id_split.setdefault(i, split) != split:
                        raise DatasetLayoutError(f"{folder}: id {i} is listed in both "
                                                 f"{id_split[i]}.json and {split}.json")
                    group_of[i] = "_".join(sorted(pair))
        for rel, p, label, t, s in items:
            sides = {id_split.get(i) for i in (t, s or t)}
            if None in sides:
                report.skip(p, f"id not listed in the split files in {folder}")
            elif len(sides) > 1:
                report.skip(p, "its two ids sit in different splits")
            else:
                split_of[rel] = sides.pop()
        return split_of, group_of

    logger.warning("FaceForensics++: official split files not found in %s; using a "
                   "deterministic ~72/14/14 split that keeps linked ids together", folder)
    group_of = _components((t, s or t) for _, _, _, t, s in items)
    comp_split = _fallback_splits(sorted(set(group_of.values())))
    for rel, _, _, t, _ in items:
        split_of[rel] = comp_split[group_of[t]]
    return split_of, group_of


def _index_dfd(root: Path, compression: str, report: IndexReport) -> list[VideoRecord]:
    """DeepFakeDetection: actors' reals and their fakes, split by target actor."""
    real_dir = root / "original_sequences" / "actors" / compression / "videos"
    fake_dir = root / "manipulated_sequences" / "DeepFakeDetection" / compression / "videos"
    if not real_dir.is_dir() and not fake_dir.is_dir():
        raise DatasetLayoutError(f"{real_dir}: missing, and so is {fake_dir} (asked for "
                                 "DeepFakeDetection videos)")
    items = []
    for p in _mp4s(real_dir):
        actor, sep, _ = p.stem.partition("__")
        if not sep:
            report.skip(p, "name is not <actor>__<scene>.mp4")
            continue
        items.append((p, 0, actor, None))
    for p in _mp4s(fake_dir):
        m = re.fullmatch(r"([^_]+)_([^_]+)__(.+)__([^_]+)", p.stem)
        if not m:
            report.skip(p, "name is not <t>_<s>__<scene>__<id>.mp4")
            continue
        src = real_dir / f"{m.group(1)}__{m.group(3)}.mp4"
        items.append((p, 1, m.group(1), _rel(src, root) if src.is_file() else None))
    actor_split = _fallback_splits(sorted({f"actor{a}" for _, _, a, _ in items}))
    return [VideoRecord(str(p), _rel(p, root), label, f"actor{a}", actor_split[f"actor{a}"],
                        False, src, None) for p, label, a, src in items]
