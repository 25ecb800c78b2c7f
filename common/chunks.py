"""The DFDC chunk iterator: parts in the recipe's order, each with its own label counts.

Chunk k is `dfdc_train_part_k`. Stage 4 trains a few epochs on one chunk, then the next,
under one learning-rate schedule; a resumed run starts again at the chunk it stopped in.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

from common.errors import DatasetLayoutError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chunk:
    number: int                 # DFDC part number
    position: int               # place in the training order (0-based)
    records: tuple              # this part's training VideoRecords
    class_counts: tuple[int, int]   # (real, fake) training videos


def check_chunks(order: Sequence[int], available: Iterable[int], skip_missing: bool) -> list[int]:
    """The order with absent parts removed (with a warning) or a clear error naming them."""
    have = set(available)
    missing = [c for c in order if c not in have]
    if missing and not skip_missing:
        names = ", ".join(f"dfdc_train_part_{c}" for c in missing)
        raise DatasetLayoutError(f"DFDC part folder(s) not found under --data: {names} "
                                 "(pass --chunks with the parts you have, or --skip-missing-chunks)")
    for c in missing:
        log.warning("DFDC part dfdc_train_part_%d is missing: skipped (--skip-missing-chunks)", c)
    kept = [c for c in order if c in have]
    if not kept:
        raise DatasetLayoutError("none of the requested DFDC parts is present under --data")
    return kept


def iter_chunks(records: Sequence, order: Sequence[int]) -> Iterator[Chunk]:
    """Yield the training chunks in `order`, each with its (real, fake) training counts."""
    for position, number in enumerate(order):
        train = tuple(r for r in records if r.chunk == number and r.split == "train")
        fakes = sum(r.label for r in train)
        yield Chunk(number, position, train, (len(train) - fakes, fakes))
