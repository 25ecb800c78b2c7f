"""Index the official FaceForensics++, Celeb-DF v2 and DFDC trees into `VideoRecord`s.

Indexers only look at names on disk and at the small list/metadata files; they never
decode video. Every split is grouped so that source footage (FF++ pair, Celeb-DF
identity, DFDC original) never sits on both sides of train/val. Videos that cannot be
used are logged and counted in an optional `IndexReport`.

This module is the public entry point: `index_dataset` picks the indexer by name, and
every name other modules import from here is re-exported. The work lives in
`common.data.records` (records, skip report), `common.data.layout` (roots, layout
detection, DFDC parts), `common.data.group_splits` (grouped fallback splits) and one module
per dataset: `common.data.index_faceforensics`, `common.data.index_celebdf`, `common.data.index_dfdc`.
"""
from __future__ import annotations

from pathlib import Path

from common.data.identity_split import MAX_DROPPED_FAKES
from common.data.index_celebdf import index_celebdf
from common.data.index_dfdc import index_dfdc
from common.data.index_faceforensics import DEFAULT_METHODS, index_faceforensics
from common.data.layout import detect_layout, part_dirs
from common.data.records import SPLITS, IndexReport, VideoRecord, summarize
from common.errors import DatasetLayoutError

__all__ = ["DATASETS", "DEFAULT_METHODS", "MAX_DROPPED_FAKES", "SPLITS", "IndexReport", "VideoRecord",
           "detect_layout", "index_celebdf", "index_dataset", "index_dfdc", "index_faceforensics",
           "part_dirs", "summarize"]

DATASETS = ("faceforensics", "celebdf", "dfdc")

_INDEXERS = {"faceforensics": index_faceforensics, "celebdf": index_celebdf, "dfdc": index_dfdc}


def index_dataset(name: str, root: str | Path, **kw) -> list[VideoRecord]:
    """Index `root` with the layout called `name` (one of DATASETS)."""
    if name not in _INDEXERS:
        raise DatasetLayoutError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    return _INDEXERS[name](root, **kw)
