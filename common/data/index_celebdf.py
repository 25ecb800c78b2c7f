"""Index the official Celeb-DF v2 tree into `VideoRecord`s: the official test list, and
validation identities held out so that no identity sits on both sides of train/val."""
from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

from common.data.group_splits import _rank
from common.data.identity_split import MAX_DROPPED_FAKES, choose_val_identities
from common.data.layout import _check_root, _mp4s, _rel
from common.data.records import IndexReport, VideoRecord, _finish
from common.errors import DatasetLayoutError

logger = logging.getLogger("common.data.datasets")  # see common.data.records

_CDF_EXPECT = "expected a Celeb-DF v2 root with Celeb-real/ and Celeb-synthesis/"
_CDF_FOLDERS = ("Celeb-real", "YouTube-real", "Celeb-synthesis")


def _read_celebdf_test_list(path: Path) -> dict[str, int]:
    """rel -> our label (1 = fake). The file itself says 1 = REAL, 0 = FAKE."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # tolerate a byte-order mark
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetLayoutError(f"{path}: unreadable ({e})") from None
    out = {}
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        parts = line.split()
        if (len(parts) != 2 or parts[0] not in ("0", "1") or not parts[1].endswith(".mp4")
                or parts[1].split("/")[0] not in _CDF_FOLDERS):
            raise DatasetLayoutError(f"{path}:{n}: expected '<1|0> <folder>/<file>.mp4', "
                                     f"got {line!r}")
        label = 1 - int(parts[0])
        if label != (parts[1].startswith("Celeb-synthesis/")):
            raise DatasetLayoutError(f"{path}:{n}: label {parts[0]} disagrees with the folder of "
                                     f"{parts[1]} (in this file 1 = real, 0 = fake)")
        out[parts[1]] = label
    return out


def index_celebdf(root: str | Path, val_fraction: float = 0.1, seed: int = 0,
                  strict_identities: bool = True,
                  report: IndexReport | None = None) -> list[VideoRecord]:
    """Test list -> "test"; validation identities are held out so that neither identity of
    a fake id<A>_id<B> is on both sides. strict_identities=False splits fakes by their
    target id<A> only (keeps every fake; the swapped-in face B may then cross train/val)."""
    root = _check_root(root, ["Celeb-real", "Celeb-synthesis"], _CDF_EXPECT)
    report = report if report is not None else IndexReport()
    test_file = root / "List_of_testing_videos.txt"
    if test_file.is_file():
        test = _read_celebdf_test_list(test_file)
        if not test:  # a cut download or copy: training on would quietly drop the test report
            raise DatasetLayoutError(f"{test_file}: lists no videos; restore the official file (518 "
                                     "lines), or remove it to train without a test split")
    else:
        logger.warning("Celeb-DF: %s not found; there will be no test split", test_file)
        test = {}

    # (path, rel, label, identities [A] or [A, B] or [], group, source)
    items = []
    for p in _mp4s(root / "Celeb-real"):
        m = re.fullmatch(r"id(\d+)_(\d+)", p.stem)
        if m:
            items.append((p, _rel(p, root), 0, [m.group(1)], f"id{m.group(1)}", None))
        else:
            report.skip(p, "name is not id<A>_<clip>.mp4")
    for p in _mp4s(root / "YouTube-real"):
        items.append((p, _rel(p, root), 0, [], f"yt{p.stem}", None))
    for p in _mp4s(root / "Celeb-synthesis"):
        m = re.fullmatch(r"id(\d+)_id(\d+)_(\d+)", p.stem)
        if not m:
            report.skip(p, "name is not id<A>_id<B>_<clip>.mp4")
            continue
        src = root / "Celeb-real" / f"id{m.group(1)}_{m.group(3)}.mp4"
        items.append((p, _rel(p, root), 1, [m.group(1), m.group(2)], f"id{m.group(1)}",
                      _rel(src, root) if src.is_file() else None))
    on_disk = {it[1] for it in items}
    for rel in sorted(set(test) - on_disk):
        report.skip(root / rel, "listed in List_of_testing_videos.txt but not on disk")

    rest = [it for it in items if it[1] not in test]
    val_ids, val_yt = _celebdf_val(rest, val_fraction, seed)
    records, dropped = [], 0
    for p, rel, label, ids, group, src in items:
        if rel in test:
            split = "test"
        elif not ids:
            split = "val" if group in val_yt else "train"
        else:
            sides = {i in val_ids for i in (ids if strict_identities else ids[:1])}
            if len(sides) > 1:
                report.skip(p, f"identities {'/'.join('id' + i for i in ids)} straddle train/val")
                dropped += 1
                continue
            split = "val" if sides.pop() else "train"
        records.append(VideoRecord(str(p), rel, label, group, split, False, src, None))
    _log_celebdf_drops(records, dropped, val_ids)
    _finish("Celeb-DF", root, records, report)
    return records


def _log_celebdf_drops(records: list[VideoRecord], dropped: int, val_ids: set[str]) -> None:
    """The exact number of fakes the identity split cost, and what validation holds."""
    kept = sum(1 for r in records if r.label == 1 and r.split != "test")
    total = kept + dropped
    share = dropped / total if total else 0.0
    val = Counter(r.label for r in records if r.split == "val")
    log = logger.warning if share > MAX_DROPPED_FAKES else logger.info
    log("Celeb-DF: validation identities %s; %d of %d fakes outside the test list dropped (%.1f%%, "
        "their two identities straddle train/val; limit %.0f%%); validation: %d real, %d fake",
        ", ".join(f"id{i}" for i in sorted(val_ids, key=int)) or "none", dropped, total, 100 * share,
        100 * MAX_DROPPED_FAKES, val[0], val[1])


def _celebdf_val(items, val_fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """Validation identities (fewest fakes across the cut, common.data.identity_split) and, drawn
    separately, the YouTube reals held out."""
    if val_fraction <= 0:
        return set(), set()
    yt = sorted((it[4] for it in items if not it[3]), key=lambda g: _rank(g, seed))
    reals = Counter(it[3][0] for it in items if it[2] == 0 and it[3])
    fakes = [tuple(it[3]) for it in items if it[2] == 1]
    ids = sorted(set(reals) | {i for pair in fakes for i in pair}, key=lambda i: _rank(f"id{i}", seed))
    if len(ids) < 3:
        logger.warning("Celeb-DF: only %d identities outside the test list; no identity "
                       "held out for validation", len(ids))
        return set(), set(yt[:round(val_fraction * len(yt))])
    target = val_fraction * sum(1 for it in items if it[3])
    return choose_val_identities(ids, reals, fakes, target), set(yt[:round(val_fraction * len(yt))])
