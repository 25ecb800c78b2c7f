"""Index the DFDC training parts into `VideoRecord`s from each part's metadata.json; a real
and all its fakes go to validation together, decided per chunk."""
from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

from common.data.group_splits import _rank
from common.data.layout import _DFDC_EXPECT, _check_root, _mp4s, _rel, detect_layout, part_dirs
from common.data.records import IndexReport, VideoRecord, _finish
from common.errors import DatasetLayoutError

logger = logging.getLogger("common.data.datasets")  # see common.data.records


def _read_dfdc_metadata(path: Path) -> dict[str, dict]:
    if not path.is_file():
        raise DatasetLayoutError(f"{path}: missing (every DFDC part has a metadata.json)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DatasetLayoutError(f"{path}: unreadable metadata ({e})") from None
    if not isinstance(meta, dict):
        raise DatasetLayoutError(f"{path}: expected one JSON object keyed by file name")
    for name, entry in meta.items():
        label = entry.get("label") if isinstance(entry, dict) else None
        if not isinstance(label, str) or label.upper() not in ("FAKE", "REAL"):
            raise DatasetLayoutError(f"{path}: entry {name!r} has no label FAKE or REAL")
    return meta


def index_dfdc(root: str | Path, parts: Iterable[int] | None = None, val_fraction: float = 0.1,
               seed: int = 0, report: IndexReport | None = None) -> list[VideoRecord]:
    root = _check_root(root, [], _DFDC_EXPECT)
    report = report if report is not None else IndexReport()
    found = part_dirs(root)
    if not found:
        hint = " (this is one part: give its parent folder)" if (root / "metadata.json").is_file() \
            else f" (it looks like a {detect_layout(root)} root)" if detect_layout(root) else ""
        raise DatasetLayoutError(f"{root}: no dfdc_train_part_<k>/ folders here{hint}; {_DFDC_EXPECT}")
    wanted = sorted(found) if parts is None else sorted(set(int(k) for k in parts))
    absent = [k for k in wanted if k not in found]
    if absent:
        raise DatasetLayoutError(f"{root}: no dfdc_train_part_{absent[0]} (parts found: "
                                 f"{', '.join(map(str, sorted(found)))})")
    # (path, rel, label, name, original name, chunk)
    items, on_disk = [], set()
    for k in wanted:
        folder = found[k]
        meta = _read_dfdc_metadata(folder / "metadata.json")
        files = {p.name: p for p in _mp4s(folder)}
        on_disk |= set(files)
        for name in sorted(set(files) - set(meta)):
            report.skip(files[name], "not listed in metadata.json")
        for name, entry in sorted(meta.items()):
            if name not in files:
                # Kept as a record: extraction marks it `missing`, so it is named in
                # skipped.txt and counts towards --max-bad-fraction like any unusable video.
                report.skip(folder / name, "listed in metadata.json but missing on disk")
            path = files.get(name, folder / name)
            fake = entry["label"].upper() == "FAKE"
            original = entry.get("original") if fake else None
            original = original if isinstance(original, str) and original else None
            items.append((path, _rel(path, root), int(fake), name, original, k))
    group_of = _dfdc_groups({name: (bool(fake), orig) for _, _, fake, name, orig, _ in items}, on_disk)
    items = [(p, rel, label, group_of[name], name, k) for p, rel, label, name, _, k in items]
    rel_of = {name: rel for p, rel, label, _, name, _ in items if not label and p.name in on_disk}
    val_groups = _dfdc_val(items, val_fraction, seed)
    records = [VideoRecord(str(p), rel, label, group, "val" if group in val_groups else "train",
                           True, rel_of.get(group) if label else None, k)
               for p, rel, label, group, _, k in items]
    _finish("DFDC", root, records, report)
    return records


def _dfdc_groups(entries: dict[str, tuple[bool, str | None]], on_disk: set[str]) -> dict[str, str]:
    """name -> group: the real a fake was made from, followed through fakes that metadata.json
    names as originals. A fake whose chain never reaches a real (it names itself, or fakes name
    each other) is a group of its own; one whose original is not on disk keeps that name as
    its group (its siblings stay together). The bad entries are counted in one warning."""
    bad = Counter()
    for name, (fake, orig) in entries.items():
        if not fake or orig is None:
            continue
        if orig == name:
            bad["itself"] += 1
        elif entries.get(orig, (False, None))[0]:
            bad["another fake"] += 1
        elif orig not in on_disk:
            bad["a file not on disk"] += 1
    if sum(bad.values()):
        logger.warning("DFDC: metadata.json 'original' entries that name %s; those fakes are grouped "
                       "with the real their chain reaches, else alone",
                       ", ".join(f"{what}: {n}" for what, n in bad.items() if n))
    groups = {}
    for name in entries:
        chain, cur = [name], name
        while True:
            fake, orig = entries.get(cur, (False, None))
            if not fake or orig is None:
                break
            if orig in chain:  # itself, or a loop of fakes: the same name from every member
                cur = min(chain[chain.index(orig):])
                break
            chain.append(orig)
            cur = orig
        groups[name] = cur
    return groups


def _dfdc_val(items, val_fraction: float, seed: int) -> set[str]:
    """Per chunk, ~val_fraction of the groups (a real and all its fakes) go to validation;
    a group met again in a later chunk keeps its first decision."""
    decided: dict[str, bool] = {}
    by_chunk: dict[int, dict[str, None]] = defaultdict(dict)
    for _, _, _, group, _, k in items:
        by_chunk[k][group] = None
    for k in sorted(by_chunk):
        fresh = sorted((g for g in by_chunk[k] if g not in decided), key=lambda g: _rank(g, seed))
        n_val = max(1, round(val_fraction * len(fresh))) if val_fraction > 0 and len(fresh) >= 2 else 0
        for i, g in enumerate(fresh):
            decided[g] = i < n_val
    return {g for g, v in decided.items() if v}
