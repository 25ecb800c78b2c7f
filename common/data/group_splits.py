"""Deterministic splits that keep whole groups (linked ids, actors) on one side."""
from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Iterable


def _rank(key: str, seed: int = 0) -> str:
    """Stable pseudo-random order (Python's hash() is salted per process)."""
    return hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()


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
