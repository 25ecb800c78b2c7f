"""Which videos a student's stages trained and validated on, and which test videos they touch.

Every stage checkpoint keeps its `data_index` (how to re-index its dataset, split and cap
included) and `val_videos` (the exact validation list). A finished stage also keeps
`lineage`: those two for every stage its weights passed through, oldest first, so a student
file alone says what it has seen. `common.evaluate` re-indexes each stage of each student and
refuses test videos any of them trained or validated on (`find_overlaps`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from common.errors import UserError
from common.recipes import RECIPES
from common.training.checkpoints import load_checkpoint, stage_paths
from common.training.stage_data import stage_records


def stage_entry(ckpt: dict) -> dict | None:
    """What one stage checkpoint says about its data, or None when it records nothing."""
    if not ckpt.get("data_index"):
        return None
    return {"stage": ckpt.get("stage"), "data_index": ckpt["data_index"],
            "val_videos": list(ckpt.get("val_videos") or [])}


def lineage_of(ckpt: dict) -> list[dict]:
    """Every stage a checkpoint's weights passed through (stage_entry each), oldest first."""
    if ckpt.get("lineage") is not None:
        return list(ckpt["lineage"])
    own = stage_entry(ckpt)
    return list(ckpt.get("lineage_before") or []) + ([own] if own else [])


def lineage_before(start: str, ckpt: dict | None) -> list[dict]:
    """The stages behind a run's starting weights: a resumed run keeps what its first start
    recorded; a run from a previous stage or --init inherits that checkpoint's lineage."""
    if ckpt is None:
        return []
    return list(ckpt.get("lineage_before") or []) if start == "resume" else lineage_of(ckpt)


def student_lineage(ckpt: dict, checkpoint_dir: str | Path, name: str) -> tuple[list[dict], list[str]]:
    """-> (the stages a student passed through, the stages that could not be read).

    The student's own `lineage` first; an earlier stage it does not name (files written before
    lineages were kept) is read from `<checkpoint_dir>/<name>_<stage>.pt` when present."""
    entries = lineage_of(ckpt)
    covered = {e["stage"] for e in entries}
    unread = []
    recipe = RECIPES.get(str(ckpt.get("stage")))
    previous = recipe.previous if recipe else None
    while previous is not None:
        if previous not in covered:
            path = stage_paths(checkpoint_dir, name, previous).best
            entry = None
            if path.is_file():
                try:
                    entry = stage_entry(load_checkpoint(path))
                except UserError:
                    entry = None
            if entry is None:
                unread.append(previous)
            else:
                entries.insert(0, entry)
        previous = RECIPES[previous].previous
    return entries, unread


@dataclass
class Overlap:
    """Test videos one stage used, with the students that passed through that stage."""
    stage: str
    split: str                       # "training" | "validation"
    videos: set[str]
    students: list[str] = field(default_factory=list)

    def line(self, n_test: int) -> str:
        return (f"{len(self.videos)} of {n_test} test videos were in {self.stage}'s {self.split} split "
                f"(students {', '.join(self.students)})")


def used_videos(entry: dict) -> tuple[dict[str, set[str]], str | None]:
    """-> ({"training": rels, "validation": rels} of one stage, why its training split is unknown).

    The recorded validation list always counts. The training split comes from re-indexing the
    stage's data_index; when that fails, or does not give back the recorded validation list
    (the data moved or changed), the training split is unknown and the reason says why."""
    recorded = set(entry.get("val_videos") or ())
    index = entry["data_index"]
    try:
        if not index.get("root"):
            raise UserError("the checkpoint records no dataset root")
        records = stage_records(index)
    except UserError as e:  # includes a root that is gone (DatasetLayoutError)
        return {"validation": recorded}, str(e)
    val = {r.rel for r in records if r.split == "val"}
    if recorded and val != recorded:
        return {"validation": recorded}, (f"re-indexing {index['root']} does not give back the "
                                          f"{len(recorded)} validation videos it recorded")
    return {"training": {r.rel for r in records if r.split == "train"}, "validation": recorded | val}, None


def find_overlaps(test_rels: Sequence[str], lineages: dict[str, list[dict]],
                  dataset: str) -> tuple[list[Overlap], list[str]]:
    """-> (overlaps per stage and split, one line per stage that could not be checked).

    Only stages on `dataset` can share videos with its test split (ids are paths relative to
    the dataset root). Each distinct stage data is re-indexed once, whatever the number of students."""
    test = set(test_rels)
    found: dict[tuple[str, str], Overlap] = {}
    unchecked: list[str] = []
    seen: dict[str, tuple] = {}
    for student, entries in lineages.items():
        for entry in entries:
            if entry["data_index"].get("dataset") != dataset:
                continue
            key = json.dumps([entry["data_index"], sorted(entry.get("val_videos") or ())], sort_keys=True, default=str)
            if key not in seen:
                seen[key] = used_videos(entry)
            used, why = seen[key]
            if why:
                unchecked.append(f"{student} {entry['stage']}: training split not checked ({why})")
            for split, rels in used.items():
                hit = rels & test
                if hit:
                    o = found.setdefault((entry["stage"], split), Overlap(str(entry["stage"]), split, set()))
                    o.videos |= hit
                    o.students.append(student)
    return list(found.values()), unchecked
