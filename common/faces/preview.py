"""Crop preview: <cache>/<key>/preview.png, a contact sheet of random real and fake videos
across their sample points, one labelled row per video, so a glance tells whether the crops
are faces."""
from __future__ import annotations

import random
from typing import Any, Sequence

import cv2
import numpy as np

from common.faces.cache import FaceCache, write_file

TILE = 64


def _row(crops: np.ndarray, columns: int) -> np.ndarray:
    """The centre frame of up to `columns` runs spread over the video, side by side."""
    k, t = crops.shape[:2]
    picks = np.linspace(0, k - 1, min(columns, k)).round().astype(int)
    tiles = [cv2.resize(np.asarray(crops[i, t // 2]), (TILE, TILE), interpolation=cv2.INTER_AREA)
             for i in picks]
    tiles += [np.zeros((TILE, TILE, 3), np.uint8)] * (columns - len(tiles))
    return np.concatenate(tiles, axis=1)


def contact_sheet(cache: FaceCache, records: Sequence[Any], per_label: int = 4,
                  columns: int = 8, seed: int = 0) -> np.ndarray | None:
    """RGB uint8 image, or None when no record has an entry."""
    rng = random.Random(seed)
    rows = []
    for label, name in ((0, "REAL"), (1, "FAKE")):
        have = [r for r in records if r.label == label and cache.meta(r.rel) is not None]
        for r in rng.sample(have, min(per_label, len(have))):
            crops, _ = cache.entry(r.rel)
            margin = np.full((TILE, 150, 3), 255, np.uint8)
            cv2.putText(margin, name, (4, 26), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 2)
            stem = r.rel.replace("\\", "/").rsplit("/", 1)[-1][:22]
            cv2.putText(margin, stem, (4, 52), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
            rows.append(np.concatenate([margin, _row(crops, columns)], axis=1))
    return np.concatenate(rows, axis=0) if rows else None


def write_preview(cache: FaceCache, records: Sequence[Any]) -> bool:
    """Write <cache dir>/preview.png atomically; False when there was nothing to show."""
    sheet = contact_sheet(cache, records)
    if sheet is None:
        return False
    ok, png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    write_file(cache.dir / "preview.png", lambda f: f.write(png.tobytes()))
    return True
