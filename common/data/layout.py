"""The folder layouts of the official datasets: checking a root, telling which layout a
folder holds, finding the DFDC part folders, listing a folder's videos."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from common.errors import DatasetLayoutError

_DFDC_EXPECT = "expected a DFDC root with dfdc_train_part_<k>/ folders holding metadata.json"


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
