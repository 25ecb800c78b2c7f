"""Held-out identities on a graph of face swaps: as few fakes as possible across the cut.

A fake id<A>_id<B> can be kept only when A and B sit on the same side of train/val, so the
fakes lost to the split are the cut of the identity graph (edge weight = fakes of that pair).
From every linked pair of ids, a set is grown by adding the id that keeps the cut smallest,
while the cut stays within MAX_DROPPED_FAKES of all fakes, until it holds the target number
of videos; the best set found wins (within the limit first, then size, then the smaller cut).
Starting from a linked pair puts fakes in validation.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

MAX_DROPPED_FAKES = 0.10  # share of the fakes the identity split may lose


def choose_val_identities(ids: Sequence[str], reals: Counter, fakes: Sequence[tuple[str, str]],
                          target: float) -> set[str]:
    """ids: every identity, in tie-break order; reals: real clips per id; fakes: (A, B) per
    fake; target: videos wanted in validation. Leaves at least two identities to train on."""
    pos = {i: k for k, i in enumerate(ids)}
    w = np.zeros((len(ids), len(ids)))
    self_fakes = np.zeros(len(ids))
    for a, b in fakes:
        if a == b:
            self_fakes[pos[a]] += 1
        else:
            w[pos[a], pos[b]] += 1
            w[pos[b], pos[a]] += 1
    n_real = np.array([reals[i] for i in ids], dtype=float)
    budget = MAX_DROPPED_FAKES * len(fakes)
    seeds = sorted({tuple(sorted((pos[a], pos[b]))) for a, b in fakes if a != b}) or [(k,) for k in range(len(ids))]
    best, best_key = None, None
    for start in seeds:
        chosen = _grow(list(start), w, n_real, self_fakes, target, budget, max_size=len(ids) - 2)
        cut, size = _cut_and_size(chosen, w, n_real, self_fakes)
        key = (cut <= budget, min(size, target), -cut, [-k for k in sorted(chosen)])
        if best_key is None or key > best_key:
            best, best_key = chosen, key
    return {ids[k] for k in best}


def _cut_and_size(chosen, w, n_real, self_fakes) -> tuple[float, float]:
    """(fakes with one identity inside, identity videos wholly inside) of an id set."""
    inside = np.zeros(len(n_real), dtype=bool)
    inside[list(chosen)] = True
    cut = float(w[inside][:, ~inside].sum())
    size = float(n_real[inside].sum() + self_fakes[inside].sum() + w[inside][:, inside].sum() / 2)
    return cut, size


def _grow(chosen: list[int], w, n_real, self_fakes, target: float, budget: float, max_size: int) -> list[int]:
    """Add the id that keeps the cut smallest until the set is big enough or the cut too large."""
    inside = np.zeros(len(n_real), dtype=bool)
    inside[chosen] = True
    cut, size = _cut_and_size(chosen, w, n_real, self_fakes)
    degree = w.sum(axis=1)
    while size < target and inside.sum() < max_size:
        links_in = w[:, inside].sum(axis=1)
        new_cut = cut + degree - 2 * links_in
        gain = n_real + self_fakes + links_in
        k = int(np.argmin(np.where(inside, np.inf, new_cut - 1e-6 * gain)))  # ties: the bigger gain
        if new_cut[k] > budget:
            break
        inside[k] = True
        chosen.append(k)
        cut, size = float(new_cut[k]), size + float(gain[k])
    return chosen
