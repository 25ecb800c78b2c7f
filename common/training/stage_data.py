"""From a dataset root to DataLoaders: index, cap, face cache, samples, samplers.

The engine never sees a dataset layout; this module is where layouts become samples.
"""
from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import DataLoader

from common.data.datasets import SPLITS, index_dataset
from common.data.samples import EpochSampler, FaceSamples, ShardSampler, collate_samples
from common.errors import DatasetLayoutError, UserError
from common.faces.cache import FaceCache
from common.faces.extraction import build_face_cache
from common.faces.views import view_of
from common.model import CLIP_MODELS
from common.preprocess import ClipTransform
from common.training import distributed
from common.training.augment import ClipAugmenter, augmenter_for

log = logging.getLogger(__name__)


class TooManyBadVideos(RuntimeError):
    """More than --max-bad-fraction of a split could not be read: do not train on scraps."""


def index_arguments(cfg, recipe) -> dict:
    """The dataset-index arguments of this stage, as plain values a checkpoint can keep:
    enough to re-index exactly the videos it trained and validated on (`stage_records`)."""
    kw: dict = {}
    if recipe.dataset == "faceforensics":
        folder = Path(cfg.splits) if cfg.splits is not None else Path(cfg.data) / "splits"
        kw = {"compression": cfg.compression, "splits_dir": None if cfg.splits is None else str(cfg.splits),
              # a run that found no split files made its own split; files added later must not change it
              "use_split_files": cfg.splits is not None or any((folder / f"{s}.json").is_file() for s in SPLITS)}
    elif recipe.dataset == "celebdf":
        kw = {"seed": cfg.seed}
    elif recipe.dataset == "dfdc":
        kw = {"parts": [int(k) for k in (cfg.chunks or recipe.chunks)], "seed": cfg.seed,
              "val_parts": [int(k) for k in getattr(cfg, "val_parts", None) or ()]}
    return {"dataset": recipe.dataset, "root": str(cfg.data), "kwargs": kw,
            "max_videos": cfg.max_videos, "cap_seed": cfg.seed, "validation": validation_choice(recipe.dataset, kw)}


def validation_choice(dataset: str, kw: dict) -> str:
    """How a stage validates, in words (kept in the checkpoint, shown by common.status)."""
    if dataset == "faceforensics":
        return "official val.json" if kw["use_split_files"] else "own split by pair (no split files)"
    if dataset == "celebdf":
        return "grouped by identity"
    val_parts = kw.get("val_parts")
    if val_parts:
        return f"held-out part{'s' if len(val_parts) > 1 else ''} {','.join(map(str, val_parts))}"
    return "grouped by original (identities may cross)"


def dfdc_val_parts(cfg, recipe, present) -> tuple[int, ...]:
    """DFDC validation parts: --val-parts, else the first present part outside the training
    order, else none (the grouped split of the training parts, with a warning)."""
    order = [int(k) for k in (cfg.chunks or recipe.chunks)]
    given = tuple(getattr(cfg, "val_parts", None) or ())
    if given:
        clash = sorted(set(given) & set(order))
        if clash:
            raise UserError(f"--val-parts {','.join(map(str, clash))} also in the training order (--chunks); "
                            "validation parts must be parts no chunk trains on")
        absent = [k for k in given if k not in present]
        if absent:
            raise DatasetLayoutError(f"--val-parts: no dfdc_train_part_{absent[0]} under {cfg.data}")
        return given
    outside = sorted(k for k in present if k not in order)
    if outside:
        log.info("DFDC validation: the whole held-out part %d (--val-parts to choose others)", outside[0])
        return (outside[0],)
    log.warning("DFDC validation: no part outside the training order is present, so validation is a "
                "split of the training parts grouped by original video; the same actors may be on both sides")
    return ()


def index_records(cfg, recipe) -> list:
    """Index the official tree of this stage's dataset (raises DatasetLayoutError early)."""
    return index_from(index_arguments(cfg, recipe))


def index_from(data_index: dict) -> list:
    """The records a checkpoint's `data_index` describes, each with the split it had (before the cap)."""
    kw = dict(data_index.get("kwargs") or {})
    if data_index["dataset"] != "dfdc":
        return index_dataset(data_index["dataset"], data_index["root"], **kw)
    val_parts = set(kw.pop("val_parts", None) or ())
    if not val_parts:
        return index_dataset("dfdc", data_index["root"], **kw)
    records = index_dataset("dfdc", data_index["root"], parts=sorted(set(kw["parts"]) | val_parts),
                            seed=kw.get("seed", 0), val_fraction=0)  # training parts: all train
    return [replace(r, split="val") if r.chunk in val_parts else r for r in records]


def stage_records(data_index: dict) -> list:
    """Exactly the videos of a stage, split as it was: index_from, then the stage's --max-videos cap."""
    return cap_per_split(index_from(data_index), data_index.get("max_videos"), data_index.get("cap_seed", 0),
                         key=cap_key)


def cap_key(record):
    """--max-videos applies per split, and per chunk within DFDC's training split."""
    return record.split, record.chunk if record.split == "train" else None


def cap_per_split(records: Sequence, max_videos: int | None, seed: int,
                  key=lambda r: r.split) -> list:
    """At most `max_videos` per split (per key), half real and half fake where possible."""
    if not max_videos:
        return list(records)
    groups: dict = defaultdict(lambda: ([], []))
    for r in sorted(records, key=lambda r: r.rel):
        groups[key(r)][r.label].append(r)
    rng = random.Random(seed)
    kept = []
    for real, fake in groups.values():
        rng.shuffle(real)
        rng.shuffle(fake)
        n_real = min(len(real), max(max_videos // 2, max_videos - len(fake)))
        kept += real[:n_real] + fake[:max_videos - n_real]
    return kept


def make_cache(cfg, recipe) -> FaceCache:
    return FaceCache(cfg.cache_dir, recipe.dataset, crop_size=cfg.image_size,
                     frames_per_video=cfg.frames_per_video, clip_len=cfg.clip_len,
                     detector=cfg.face_detector, preprocessing=recipe.preprocessing)


def ensure_cached(records: Sequence, cache: FaceCache, cfg, dist_info, what: str, stop=None) -> dict:
    """Extract faces for `records` (sharded over ranks), then wait for every rank.
    `stop` (a StopFlag) ends the extraction early after a SIGTERM; the caller checks it."""
    summary = build_face_cache(list(records), cache, workers=cfg.workers,
                               shard=(dist_info.rank, dist_info.world),
                               face_model=cfg.face_model, progress=dist_info.main,
                               should_stop=None if stop is None else (lambda: stop.raised))
    distributed.barrier(dist_info)
    log.info("face cache for %s: %s", what, {k: v for k, v in summary.items() if k != "failed"})
    return summary


MIN_BAD_TO_STOP = 3  # a split stops only when more than 2 of its videos are unusable


def check_bad_fraction(dataset: FaceSamples, total: int, limit: float, split: str,
                       skipped_file: Path) -> None:
    """Stop when too much of a split is unusable: a share above `limit` AND more than 2
    videos (one odd file in an 8-video split is 12.5%, but no reason to stop). Unusable =
    missing, bad_video, no_face, few_faces or failed. Names the file that lists them."""
    if total and dataset.missing >= MIN_BAD_TO_STOP and dataset.missing / total > limit:
        raise TooManyBadVideos(
            f"{dataset.missing} of {total} {split} videos ({dataset.missing / total:.1%}) have no usable "
            f"face crops (limit {limit:.0%}, --max-bad-fraction); see {skipped_file}")


def samples_for(records: Sequence, cache: FaceCache, cfg, recipe, train: bool,
                view: str | None = None) -> FaceSamples:
    """Training and evaluation read the same way: the workers only read uint8 crops and collate
    them. The cache already holds the stage's CLAHE / bilateral output (FaceCache.preprocessing);
    the augmentation (train_augmenter) and the normalisation run on the training device.
    The crops are the model's own view (views.MODEL_VIEWS) unless `view` says otherwise (a
    checkpoint's recorded view)."""
    clip = cfg.clip_len if cfg.model in CLIP_MODELS else 1
    transform = ClipTransform(cfg.image_size, preprocessing="none", normalize=False)
    return FaceSamples(records, cache, clip_len=clip, transform=transform, with_audio=cfg.model == "av",
                       view=view or view_of(cfg.model))


def train_augmenter(recipe, model: str | None = None, crop_size: int = 224) -> ClipAugmenter | None:
    """The recipe's augmentation as fits the model's view (augment.view_level), for
    common.training.engine.train_one_epoch(augment=...)."""
    return augmenter_for(recipe.augmentation, view_of(model), crop_size)


def split_counts(records: Sequence) -> dict:
    c = Counter((r.split, r.label) for r in records)
    return {s: {"real": c[(s, 0)], "fake": c[(s, 1)]} for s in sorted({r.split for r in records})}


def train_loader(dataset: FaceSamples, cfg, recipe, dist_info, device: torch.device):
    sampler = EpochSampler(dataset.labels, seed=cfg.seed, shuffle=True,
                           balanced=recipe.balanced_sampler, rank=dist_info.rank, world=dist_info.world)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate_samples,
                        num_workers=cfg.workers, pin_memory=device.type == "cuda",
                        persistent_workers=cfg.workers > 0,
                        drop_last=len(sampler) >= cfg.batch_size,
                        generator=torch.Generator())  # keeps the global RNG (dropout) resumable

    return loader, sampler


def eval_loader(dataset: FaceSamples, cfg, dist_info, device: torch.device) -> DataLoader:
    sampler = ShardSampler(len(dataset), dist_info.rank, dist_info.world)
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                      collate_fn=collate_samples, pin_memory=device.type == "cuda",
                      generator=torch.Generator())
