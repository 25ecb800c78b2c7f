"""Index the official FaceForensics++, Celeb-DF v2 and DFDC trees into `VideoRecord`s.

Indexers only look at names on disk and at the small list/metadata files; they never
decode video. Every split is grouped so that source footage (FF++ pair, Celeb-DF
identity, DFDC original) never sits on both sides of train/val. Videos that cannot be
used are logged and counted in an optional `IndexReport`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from common.errors import DatasetLayoutError
from common.identity_split import MAX_DROPPED_FAKES, choose_val_identities

logger = logging.getLogger(__name__)

DEFAULT_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter")
DATASETS = ("faceforensics", "celebdf", "dfdc")
SPLITS = ("train", "val", "test")
_FF_EXPECT = "expected a FaceForensics++ root with original_sequences/ and manipulated_sequences/"
_CDF_EXPECT = "expected a Celeb-DF v2 root with Celeb-real/ and Celeb-synthesis/"
_DFDC_EXPECT = "expected a DFDC root with dfdc_train_part_<k>/ folders holding metadata.json"
_CDF_FOLDERS = ("Celeb-real", "YouTube-real", "Celeb-synthesis")
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


# ---------------------------------------------------------------- small helpers
def _rank(key: str, seed: int = 0) -> str:
    """Stable pseudo-random order (Python's hash() is salted per process)."""
    return hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()


def _check_root(root: str | Path, must_have: Iterable[str], expect: str) -> Path:
    path = Path(root).expanduser().absolute()
    if not path.exists():
        raise DatasetLayoutError(f"{path}: does not exist; {expect}")
    if not path.is_dir():
        raise DatasetLayoutError(f"{path}: is a file, not a folder; {expect}")
    missing = [m for m in must_have if not (path / m).is_dir()]
    if missing:
        hint = detect_layout(path)
        seen = f" (it looks like a {hint} root)" if hint else ""
        raise DatasetLayoutError(f"{path}: no {', '.join(m + '/' for m in missing)} here{seen}; {expect}")
    return path


def detect_layout(root: str | Path) -> str | None:
    """Which official layout a folder matches, or None."""
    p = Path(root)
    if (p / "original_sequences").is_dir() and (p / "manipulated_sequences").is_dir():
        return "faceforensics"
    if (p / "Celeb-real").is_dir() and (p / "Celeb-synthesis").is_dir():
        return "celebdf"
    if p.is_dir() and part_dirs(p):
        return "dfdc"
    return None


def _mp4s(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() == ".mp4" and p.is_file() and not p.name.startswith("."))


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _components(links: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Union-find: id -> key of its connected component (its sorted ids joined by '_')."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = x = parent[parent[x]]
        return x

    for a, b in links:
        parent[find(a)] = find(b)
    members: dict[str, list[str]] = defaultdict(list)
    for x in sorted(parent):
        members[find(x)].append(x)
    return {x: "_".join(ids) for ids in members.values() for x in ids}


def _fallback_splits(keys: list[str], fractions=(0.72, 0.14, 0.14)) -> dict[str, str]:
    """Deterministic train/val/test of whole keys; each split gets one when there are >= 3."""
    order = sorted(keys, key=_rank)
    n = len(order)
    n_val = max(1, round(fractions[1] * n)) if n >= 3 else 0
    n_test = max(1, round(fractions[2] * n)) if n >= 3 else 0
    n_train = n - n_val - n_test
    return {k: ("train" if i < n_train else "val" if i < n_train + n_val else "test")
            for i, k in enumerate(order)}


# ---------------------------------------------------------------- FaceForensics++
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
                        report: IndexReport | None = None) -> list[VideoRecord]:
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

    items += _ff_missing(items, root, splits_dir, used, compression, report)
    split_of, group_of = _ff_assign(items, root, splits_dir, report)
    real_rel = {t: rel for rel, _, label, t, _ in items if label == 0}
    records = [VideoRecord(str(p), rel, label, group_of[t], split_of[rel], False,
                           real_rel.get(t) if label else None, None)
               for rel, p, label, t, _ in items if rel in split_of]
    if include_dfd:
        records += _index_dfd(root, compression, report)
    _finish("FaceForensics++", root, records, report)
    return records


def _ff_missing(items, root: Path, splits_dir, used: list[str], compression: str,
                report: IndexReport) -> list:
    """Videos the official split files list (each id's original, and both fakes of each pair
    for every method in use) that are not on disk: records with their expected path, which
    extraction marks `missing` (named in skipped.txt, counted as unusable)."""
    folder = Path(splits_dir) if splits_dir is not None else root / "splits"
    official = _read_ff_splits(folder, explicit=splits_dir is not None)
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


def _ff_assign(items, root: Path, splits_dir, report: IndexReport):
    """Split per video rel and group per id, from the official pairs or a leak-free fallback."""
    folder = Path(splits_dir) if splits_dir is not None else root / "splits"
    official = _read_ff_splits(folder, explicit=splits_dir is not None)
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


# ---------------------------------------------------------------- Celeb-DF v2
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
    """Validation identities (fewest fakes across the cut, common.identity_split) and, drawn
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


# ---------------------------------------------------------------- DFDC
def part_dirs(root: str | Path) -> dict[int, Path]:
    """Part number -> folder holding its metadata.json; accepts one level of nesting
    (dfdc_train_part_00/dfdc_train_part_0/). Folders without metadata.json map to
    themselves so the indexer can name them in its error."""
    out: dict[int, Path] = {}
    pat = re.compile(r"dfdc_train_part_(\d+)")
    _check_root(root, [], _DFDC_EXPECT)  # a missing root or a file: one clear line, not a traceback
    for outer in sorted(Path(root).iterdir()):
        m = pat.fullmatch(outer.name)
        if not m or not outer.is_dir():
            continue
        found = {}
        if (outer / "metadata.json").is_file():
            found[int(m.group(1))] = outer
        else:
            found = {int(mi.group(1)): inner for inner in sorted(outer.iterdir())
                     if (mi := pat.fullmatch(inner.name)) and (inner / "metadata.json").is_file()}
        for k, folder in (found or {int(m.group(1)): outer}).items():
            has_meta = (folder / "metadata.json").is_file()
            if k in out and (out[k] / "metadata.json").is_file():
                if has_meta:
                    raise DatasetLayoutError(f"{root}: part {k} appears twice: {out[k]} and {folder}")
                continue
            out[k] = folder
    return out


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
    # (path, rel, label, group, original name, chunk)
    items = []
    for k in wanted:
        folder = found[k]
        meta = _read_dfdc_metadata(folder / "metadata.json")
        files = {p.name: p for p in _mp4s(folder)}
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
            items.append((path, _rel(path, root), int(fake), original or name, original, k))
    rel_of = {p.name: rel for p, rel, *_ in items}
    val_groups = _dfdc_val(items, val_fraction, seed)
    records = [VideoRecord(str(p), rel, label, group, "val" if group in val_groups else "train",
                           True, rel_of.get(orig) if orig else None, k)
               for p, rel, label, group, orig, k in items]
    _finish("DFDC", root, records, report)
    return records


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


# ---------------------------------------------------------------- dispatch
def _finish(name: str, root: Path, records: list[VideoRecord], report: IndexReport) -> None:
    s = summarize(records)
    logger.info("%s %s: %d videos (%s)", name, root, s["total"],
                ", ".join(f"{k} {s[k]['real']} real / {s[k]['fake']} fake" for k in SPLITS))
    if report.n_skipped:
        logger.warning("%s: %d videos skipped in all (reasons for the first %d logged above)",
                       name, report.n_skipped, min(report.n_skipped, _MAX_SKIP_LOGS))


_INDEXERS = {"faceforensics": index_faceforensics, "celebdf": index_celebdf, "dfdc": index_dfdc}


def index_dataset(name: str, root: str | Path, **kw) -> list[VideoRecord]:
    """Index `root` with the layout called `name` (one of DATASETS)."""
    if name not in _INDEXERS:
        raise DatasetLayoutError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    return _INDEXERS[name](root, **kw)
