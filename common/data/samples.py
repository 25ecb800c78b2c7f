"""Training samples read from the face cache: one frame, a clip, or a clip with its audio.

This is the single data contract every model uses (see README, "Data contract"). Reads
come from the cache only; no video is decoded inside training.
"""
from __future__ import annotations

import logging
import math
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, default_collate, get_worker_info

from common.data.audio import MEL_WINDOW, N_MELS, mel_window

log = logging.getLogger(__name__)


class FaceSamples(Dataset):
    """Items are (video, sample point) pairs of every video with a complete cache entry.

    `clip_len` 1 gives the sample point's own frame (BG, CM, RR); more gives that many
    consecutive frames centred on it (TM, AV). `view` is the kind of crop served
    (common/faces/views.py: the model's own, views.view_of). Indexing accepts `i` or `(i, seed)`: the seed
    travels with the sample as "seed" and fixes its augmentation draw (common.training.augment, on the
    training device), so results do not depend on worker count, batch or resume point.
    """

    def __init__(self, records: Sequence, cache, clip_len: int, transform, with_audio: bool = False,
                 view: str = "face"):
        self.cache = cache
        self.view = view
        self.clip_len = clip_len
        self.transform = transform
        self.with_audio = with_audio
        self.videos: list = []      # (record, fps, served clip's centre frame per point, audio present)
        points: list[int] = []      # sample points per video
        self.missing = 0
        for rec in records:
            # the index decides: an entry counts only while its video is on disk, unchanged
            meta = cache.meta(rec.rel, rec.path)
            if meta is None or view not in meta["views"]:
                self.missing += 1
                continue
            stored = cache.run_length(view)
            if stored < clip_len:
                raise ValueError(f"cache holds runs of {stored} frames, model needs {clip_len}")
            centres = [clip_centre(run, stored, clip_len) for run in meta["frame_indices"]]
            audio = bool(meta.get("audio", {}).get("present", False))
            self.videos.append((rec, float(meta["fps"]), centres, audio))
            points.append(len(centres))
        # Items as two flat arrays, not a list of tuples: 120k videos x 32 points stay a few
        # MB per DataLoader worker instead of hundreds.
        self.item_video = np.repeat(np.arange(len(points), dtype=np.int32), points)
        self.item_point = np.concatenate([np.arange(n, dtype=np.int16) for n in points]) \
            if points else np.zeros(0, dtype=np.int16)
        self.labels = np.array([self.videos[v][0].label for v in range(len(points))],
                               dtype=np.int64)[self.item_video]

    def __len__(self) -> int:
        return len(self.item_video)

    def without_audio(self) -> set[str]:
        """The videos (rel) whose cache entry has no usable audio track (none, or it failed)."""
        return {rec.rel for rec, _, _, audio in self.videos if not audio}

    def __getitem__(self, key) -> dict:
        return self._item(key)

    def __getitems__(self, keys: list) -> list[dict]:
        """A batch's items (the DataLoader asks for them together), their frames decoded
        straight into one [B, T, S, S, 3] buffer, in shared memory inside a loader worker:
        collate_samples hands that buffer on as the batch, with no copy. Only for frames served
        as stored (the training and evaluation transform); otherwise item by item."""
        t = self.transform
        if not (getattr(t, "normalize", True) is False and getattr(t, "preprocessing", "") == "none"
                and getattr(t, "image_size", None) == self.cache.crop_size):
            return [self._item(k) for k in keys]
        s = self.cache.crop_size
        buf = _uint8_buffer((len(keys), self.clip_len, s, s, 3))
        return [self._item(k, buf[n]) for n, k in enumerate(keys)]

    def _item(self, key, out: torch.Tensor | None = None) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, None)
        v, point = int(self.item_video[index]), int(self.item_point[index])
        rec, fps, centres, audio_present = self.videos[v]
        if out is None:
            frames = self.transform(self._frames(v, rec.rel, point))
        else:  # as the transform gives them: a [T, 3, S, S] view of the stored order
            self._frames(v, rec.rel, point, out.numpy())
            frames = out.permute(0, 3, 1, 2)
        sample = {"frames": frames, "label": torch.tensor(rec.label, dtype=torch.long), "video": rec.rel}
        if seed is not None:  # the augmentation's seed: drawn from on the training device
            sample["seed"] = torch.tensor(seed, dtype=torch.int64)
        if self.with_audio:
            sample.update(self._audio(rec.rel, centres[point] / max(fps, 1e-6), audio_present))
        return sample

    def _frames(self, v: int, rel: str, point: int, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 [clip_len, S, S, 3]: the clip_len frames centred in run `point`, decoded here
        (in the loader's worker) through the cache's one decoder, each frame checked against
        its checksum (a damaged entry raises, and is redone by the next run)."""
        t = self.cache.run_length(self.view)
        start = clip_start(t, self.clip_len)
        return self.cache.read_frames(rel, self.view, point, start, self.clip_len, out)

    def _audio(self, rel: str, centre_s: float, present: bool) -> dict:
        mel = self.cache.read_mel(rel) if present else None
        if mel is None:
            window = np.zeros((N_MELS, MEL_WINDOW), dtype=np.float32)
        else:
            window = mel_window(mel, centre_s, MEL_WINDOW)
        missing = 1.0 if mel is None else 0.0
        return {"mel": torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32))[None],
                "audio_missing": torch.tensor(missing, dtype=torch.float32)}


def clip_start(stored: int, clip_len: int) -> int:
    """Where in a stored run of `stored` frames the served clip of `clip_len` begins: the
    middle clip_len frames (the centre frame alone for one)."""
    return (stored - clip_len + 1) // 2 if clip_len > 1 else stored // 2


def clip_centre(run: Sequence[int], stored: int, clip_len: int) -> float:
    """Video frame index at the middle of the clip served from `run` (the run's frame indices;
    `stored` frames of it are in the view): 3.5 frames past its first for 8 of 8. The audio
    window is centred here, on the frames the model sees."""
    if stored != len(run):  # a one-frame view keeps the run's centre frame
        return float(run[len(run) // 2])
    start = clip_start(stored, clip_len)
    return (run[start] + run[start + clip_len - 1]) / 2.0


def collate_samples(items: list[dict]) -> dict:
    """default_collate, except that uint8 frames stay in the cache's [.., S, S, 3] memory
    order: the batch is a [B, T, 3, S, S] view with channels-last strides, stacked with a plain
    copy. Transposing the channels in the worker was half of a clip's CPU time; the training
    device does it in common.training.engine.to_device for next to nothing."""
    batch = default_collate([{k: v for k, v in it.items() if k != "frames"} for it in items])
    frames = [it["frames"] for it in items]
    whole = _one_buffer(frames)
    if whole is not None:  # FaceSamples.__getitems__ decoded them into one buffer already
        batch["frames"] = whole
    elif frames[0].dtype == torch.uint8 and frames[0].dim() == 4:
        batch["frames"] = default_collate([f.permute(0, 2, 3, 1) for f in frames]).permute(0, 1, 4, 2, 3)
    else:
        batch["frames"] = default_collate(frames)
    return batch


def _uint8_buffer(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 tensor; in a loader worker its storage is shared memory, as
    default_collate allocates a batch there (sending it to the main process copies nothing)."""
    elem = torch.empty(0, dtype=torch.uint8)
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = elem._typed_storage()._new_shared(math.prod(shape), device=elem.device)
    return elem.new(storage).resize_(*shape)


def _one_buffer(frames: list) -> torch.Tensor | None:
    """The [B, T, 3, S, S] batch (channels-last strides) when the items' [T, 3, S, S] frames
    are consecutive views of one whole [B, T, S, S, 3] buffer; else None."""
    first = frames[0]
    if not isinstance(first, torch.Tensor) or first.dtype != torch.uint8 or first.dim() != 4:
        return None
    storage, per = first.untyped_storage(), first.numel()
    if storage.nbytes() != per * len(frames):
        return None
    for i, f in enumerate(frames):
        if (f.untyped_storage().data_ptr() != storage.data_ptr() or f.storage_offset() != i * per
                or f.shape != first.shape or not f.permute(0, 2, 3, 1).is_contiguous()):
            return None
    t, c, h, w = first.shape
    whole = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (len(frames), t, h, w, c))
    return whole.permute(0, 1, 4, 2, 3)


class EpochSampler(Sampler):
    """Yields `(index, augmentation seed)`; one order per (seed, epoch), sliced per rank.

    `balanced` draws classes equally often (with replacement); otherwise a permutation.
    Every rank sees the same number of items (the order wraps round to pad), as DDP needs.
    `skip` drops the first items of the epoch: a mid-epoch resume continues where it stopped.
    """

    def __init__(self, labels: Sequence[int], *, seed: int, shuffle: bool = True,
                 balanced: bool = False, rank: int = 0, world: int = 1):
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.seed, self.shuffle, self.balanced = seed, shuffle, balanced
        self.rank, self.world = rank, world
        self.epoch = 0
        self.skip = 0
        self.per_rank = math.ceil(len(self.labels) / world) if len(self.labels) else 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return max(0, self.per_rank - self.skip)

    def order(self) -> torch.Tensor:
        n = len(self.labels)
        total = self.per_rank * self.world
        # Any --seed works: the generator takes 64 bits, so the mix is folded into them.
        g = torch.Generator().manual_seed((self.seed * 100_003 + self.epoch) % 2**63)
        if self.balanced and n:
            counts = torch.bincount(self.labels, minlength=2).clamp(min=1).double()
            weights = 1.0 / counts[self.labels]
            return torch.multinomial(weights, total, replacement=True, generator=g)
        idx = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        return idx.repeat(math.ceil(total / max(1, n)))[:total]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        mine = self.order()[self.rank::self.world]
        base = (self.seed * 1_000_003 + self.epoch) * 10_000_019
        for pos in range(self.skip, len(mine)):
            yield int(mine[pos]), (base + pos * self.world + self.rank) % (2**63)


class ShardSampler(Sampler):
    """Validation order: every item once, rank r takes items r, r+world, ... (no padding)."""

    def __init__(self, n: int, rank: int = 0, world: int = 1):
        self.indices = list(range(rank, n, world))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)
