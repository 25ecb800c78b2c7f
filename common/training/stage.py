"""One training stage end to end: resolve the start point, data, epochs, checkpoints, calibration.

Read top to bottom, `train_stage` is the recipe's life: where it starts from (previous
stage, --init, --resume), what it trains on (one dataset, or DFDC chunk by chunk), how the
best checkpoint is chosen (validation video AUC) and what it leaves on disk. `_train` lists
the steps; each step is a function below it, and they pass one StageRun between them.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from common.chunks import check_chunks, iter_chunks
from common.data.datasets import part_dirs
from common.errors import DISK_ERRNOS, CheckpointWriteError, UserError
from common.faces.cache import CacheWriteError
from common.faces.extraction import recorded_face_settings
from common.faces.views import view_of
from common.losses import build_loss
from common.model import MODEL_NAMES, lr_multipliers
from common.recipes import FINAL_STAGE, RECIPES
from common.training import distributed, reports
from common.training import stage_data as sd
from common.training.checkpoints import capture_rng, restore_rng, stage_paths, weights_fingerprint
from common.training.engine import (NonFiniteLossError, WorkerDied, make_optimizer, make_precision,
                                    to_channels_last, train_one_epoch, validate)
from common.training.held_out import lineage_before
from common.training.metrics import require_two_classes
from common.training.run_files import (append_jsonl, check_writable, missing_rels, remove_stale_temps, report_epoch,
                                       skipped_path, tensorboard_writer, write_skipped)
from common.training.run_guard import release, run_flags
from common.training.stage_end import auc_or_floor, better, failed, finish, now, save
from common.training.stage_start import build_model, pick_device, resolve_start, take_lock
from common.training.stop_flag import StageInterrupted, StopFlag

log = logging.getLogger("train")
SAVE_EVERY_S = 20 * 60  # mid-epoch _last.pt, so a killed session loses at most this much


def train_stage(cfg) -> dict:
    """Train one stage of one model; returns the final metrics (rank 0's view)."""
    recipe = RECIPES[cfg.stage]
    if cfg.model not in MODEL_NAMES:
        raise UserError(f"unknown model {cfg.model!r}; expected one of {', '.join(MODEL_NAMES)}")
    device = pick_device(cfg.device)
    dist_info = distributed.setup(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
    paths = stage_paths(cfg.checkpoint_dir, cfg.model, cfg.stage)
    run = StageRun(cfg, recipe, device, dist_info, paths, StopFlag(dist_info, device))
    lock = None
    try:
        lock = take_lock(cfg, paths, dist_info)
        return _train(run)
    except (NonFiniteLossError, sd.TooManyBadVideos, CheckpointWriteError, CacheWriteError, WorkerDied) as e:
        raise failed(cfg, paths, dist_info, str(e)) from e
    except OSError as e:  # metrics, plots, status file on a full disk
        if e.errno not in DISK_ERRNOS:
            raise
        raise failed(cfg, paths, dist_info, f"a write failed: {e}") from e
    finally:
        run.stop.close()
        if lock is not None:
            release(lock)
        distributed.cleanup(dist_info)


@dataclass
class StageRun:
    """What one stage holds while it runs, handed from step to step."""
    cfg: Any
    recipe: Any
    device: torch.device
    dist_info: Any
    paths: Any
    stop: StopFlag
    start: str = "scratch"             # resume | init | previous | scratch
    ckpt: dict | None = None           # the checkpoint the weights come from
    ckpt_path: Path | None = None
    flags: dict = field(default_factory=dict)
    records: list = field(default_factory=list)
    model: Any = None                  # the bare model (state_dict, options)
    net: Any = None                    # what trains: the model, or its DDP wrapper
    init_fingerprint: float = 0.0
    cache: Any = None
    val_records: list = field(default_factory=list)
    val_loader: Any = None
    phases: list = field(default_factory=list)
    opt: Any = None
    sched: Any = None
    precision: Any = None
    state: dict = field(default_factory=dict)  # position, best, history: saved in every checkpoint
    board: Any = None
    last_save: float = 0.0
    augment: Any = None
    chunk: Any = None                  # the chunk whose training data is loaded
    train: ChunkData | None = None     # and that data
    lineage_before: list = field(default_factory=list)  # the earlier stages' data (held_out.stage_entry)


@dataclass
class ChunkData:
    """The training side of one chunk (all training videos outside DFDC)."""
    samples: Any
    loader: Any
    sampler: Any
    loss_fn: Any                       # its class weights come from this chunk's labels


def _train(run: StageRun) -> dict:
    cfg = run.cfg
    torch.manual_seed(cfg.seed % 2**63)
    run.flags = run_flags(cfg)  # as given: clip_len may be inherited from the start checkpoint below
    run.start, run.ckpt, run.ckpt_path = resolve_start(cfg, run.recipe, run.paths)  # before any data work
    run.lineage_before = lineage_before(run.start, run.ckpt)
    prepare_folder(run)
    index_records(run)
    build_model_on_device(run)
    load_validation(run)
    make_training_state(run)
    if run.start == "resume":
        restore(run)
    clear_overwritten(run)
    run.board = tensorboard_writer(run.paths, run.dist_info)
    run.last_save = time.monotonic()
    run.augment = sd.train_augmenter(run.recipe, cfg.model, cfg.image_size)  # on the device, one draw per clip
    while run.state["phase"] < len(run.phases):
        phase = run.phases[run.state["phase"]]
        if run.train is None or phase["chunk"] != run.chunk:
            load_training_chunk(run, phase["chunk"])
        stats = train_phase(run, phase)
        validate_and_keep(run, phase, stats)
    return finish(run)


# ----------------------------------------------------------------------------- setup

def prepare_folder(run: StageRun) -> None:
    if run.dist_info.main:
        check_writable(run.cfg.checkpoint_dir)
        remove_stale_temps(run.paths)


def index_records(run: StageRun) -> None:
    """The stage's videos, each with its split (and DFDC chunk), capped by --max-videos."""
    cfg, recipe = run.cfg, run.recipe
    if recipe.chunks:
        cfg.chunks = tuple(check_chunks(cfg.chunks or recipe.chunks, part_dirs(cfg.data),
                                        cfg.skip_missing_chunks))
        cfg.val_parts = sd.dfdc_val_parts(cfg, recipe, part_dirs(cfg.data))
    run.records = sd.stage_records(sd.index_arguments(cfg, recipe))
    log.info("%s: %s", recipe.title, sd.split_counts(run.records))
    check_training_videos(run)


def check_training_videos(run: StageRun) -> None:
    """An empty training split (an empty train.json, a DFDC part of validation videos only)
    stops here, before any extraction: an epoch of 0 steps would end in a false COLLAPSE."""
    cfg = run.cfg
    for chunk in (cfg.chunks if run.recipe.chunks else [None]):
        if any(r.split == "train" and (chunk is None or r.chunk == chunk) for r in run.records):
            continue
        where = cfg.data if chunk is None else part_dirs(cfg.data).get(chunk, cfg.data)
        hint = f" (check {cfg.splits or cfg.data / 'splits'}/train.json)" \
            if run.recipe.dataset == "faceforensics" else ""
        raise UserError(f"no training videos in {where}{hint}")


def build_model_on_device(run: StageRun) -> None:
    cfg, device = run.cfg, run.device
    if run.start in ("resume", "previous", "init"):
        cfg.clip_len = run.ckpt["model_options"].get("clip_len", cfg.clip_len)
    run.model = build_model(cfg, run.start, run.ckpt).to(device)
    if device.type == "cuda":
        run.model = to_channels_last(run.model)
    run.init_fingerprint = weights_fingerprint(run.model.state_dict())


# ----------------------------------------------------------------------------- data

def load_validation(run: StageRun) -> None:
    """The validation split: cached, checked for unusable videos, and its loader."""
    cfg = run.cfg
    run.cache = sd.make_cache(cfg, run.recipe)
    run.val_records = [r for r in run.records if r.split == "val"]
    split = f"the validation split of {cfg.stage}"
    require_two_classes([r.label for r in run.val_records], split)
    sd.ensure_cached(run.val_records, run.cache, cfg, run.dist_info, "validation", run.stop)
    run.stop.check_extraction()
    val_set = sd.samples_for(run.val_records, run.cache, cfg, run.recipe, train=False)
    skipped = sorted(missing_rels(run.val_records, run.cache))
    write_skipped(skipped_path(run.paths), skipped, run.dist_info, run.cache)
    sd.check_bad_fraction(val_set, len(run.val_records), cfg.max_bad_fraction, "val", skipped_path(run.paths))
    require_two_classes(val_set.labels, f"{split}, once videos without usable faces are left out,")
    run.val_loader = sd.eval_loader(val_set, cfg, run.dist_info, run.device)


def load_training_chunk(run: StageRun, chunk) -> None:
    """The training videos of one chunk (all of them outside DFDC): cache, samples, loss, loader."""
    cfg, cache, skipped_file = run.cfg, run.cache, skipped_path(run.paths)
    run.chunk = chunk
    records = [r for r in run.records if r.split == "train" and (chunk is None or r.chunk == chunk)]
    sd.ensure_cached(records, cache, cfg, run.dist_info,
                     "training" + (f" chunk {chunk}" if chunk is not None else ""), run.stop)
    run.stop.check_extraction()  # at a phase boundary: _last.pt already holds this state
    samples = sd.samples_for(records, cache, cfg, run.recipe, train=True)
    run.state["skipped"] = sorted(set(run.state["skipped"]) | missing_rels(records, cache))
    write_skipped(skipped_file, run.state["skipped"], run.dist_info, cache)
    sd.check_bad_fraction(samples, len(records), cfg.max_bad_fraction, "train", skipped_file)
    counts = np.bincount(samples.labels, minlength=2).tolist()
    loss_fn = build_loss(run.recipe.loss, class_counts=counts, alpha=run.recipe.focal_alpha,
                         gamma=run.recipe.focal_gamma).to(run.device)  # class weights too
    loader, sampler = sd.train_loader(samples, cfg, run.recipe, run.dist_info, run.device)
    run.train = ChunkData(samples, loader, sampler, loss_fn)


# ----------------------------------------------------------------------------- optimiser and state

def plan_phases(cfg, recipe, records) -> list[dict]:
    """(chunk, epoch) pairs in training order; one phase = one epoch over one chunk's videos."""
    epochs = cfg.epochs or recipe.epochs
    if not recipe.chunks:
        return [{"chunk": None, "position": 0, "epoch": e} for e in range(epochs)]
    order = cfg.chunks or recipe.chunks
    return [{"chunk": ch.number, "position": ch.position, "epoch": e}
            for ch in iter_chunks(records, order) for e in range(epochs)]


def make_training_state(run: StageRun) -> None:
    """Phases, the DDP wrapper, optimiser, schedule (over every phase's steps) and precision."""
    cfg, recipe, dist_info, device = run.cfg, run.recipe, run.dist_info, run.device
    run.phases = plan_phases(cfg, recipe, run.records)
    total_steps = sum(max(1, math.ceil(len([r for r in run.records if r.split == "train" and
                                            (p["chunk"] is None or r.chunk == p["chunk"])])
                                       * cfg.frames_per_video / dist_info.world / cfg.batch_size))
                      for p in run.phases)
    run.net = DistributedDataParallel(run.model, device_ids=[device.index] if device.type == "cuda" else None) \
        if dist_info.enabled else run.model
    run.opt, run.sched = make_optimizer(run.model, cfg.lr or recipe.lr, recipe.weight_decay, total_steps,
                                        recipe.warmup_fraction, recipe.lr_floor,
                                        lr_multipliers(cfg.model, recipe))
    run.precision = make_precision(device, cfg.amp)
    run.state = {"phase": 0, "batches_done": 0, "best_auc": -math.inf, "history": [],
                 "skipped": sorted(missing_rels(run.val_records, run.cache))}


def restore(run: StageRun) -> None:
    """--resume: optimiser, schedule, scaler, position and RNG as the last save left them."""
    ckpt = run.ckpt
    run.opt.load_state_dict(ckpt["optimizer"])
    run.sched.load_state_dict(ckpt["scheduler"])
    if ckpt["scaler"]:  # empty when the interrupted run had no fp16 scaler (CPU, bf16)
        run.precision.scaler.load_state_dict(ckpt["scaler"])
    run.state.update(ckpt["position"])
    restore_rng(ckpt["rng"])
    run.init_fingerprint = ckpt.get("init_fingerprint", run.init_fingerprint)
    log.info("resuming at phase %d/%d (+%d batches)", run.state["phase"] + 1, len(run.phases),
             run.state["batches_done"])


def clear_overwritten(run: StageRun) -> None:
    """--overwrite, or --resume restarting a stage that has no _last.pt, and only now that data
    and model are known good: the old run's checkpoints must not mix with the new one's. The
    final stage's student goes too, so predict never serves one this run did not write.
    --overwrite starts a new metrics file; a restart keeps it and appends a line saying so."""
    cfg, paths = run.cfg, run.paths
    restart = cfg.resume and run.start != "resume"
    if not (cfg.overwrite or restart) or not run.dist_info.main:
        return
    old = [paths.best, paths.last] + ([paths.metrics] if cfg.overwrite else []) + \
        ([paths.student] if cfg.stage == FINAL_STAGE else [])
    for path in old:
        path.unlink(missing_ok=True)
    if restart and paths.metrics.exists():
        append_jsonl(paths.metrics, {"restart": f"no {paths.last.name} to resume from: the stage "
                                                "restarted from its start", "time": now()})


def checkpoint(run: StageRun, kind: str, metrics: dict | None = None) -> dict:
    """Everything a later --resume, stage or predict needs, as one dict."""
    cfg, model = run.cfg, run.model
    return {"model": model.state_dict(), "model_options": model.options, "stage": cfg.stage,
            "recipe": run.recipe.as_dict(), "config": {k: str(v) for k, v in asdict(cfg).items()},
            "optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict(),
            "scaler": run.precision.scaler.state_dict(), "rng": capture_rng(), "position": dict(run.state),
            "metrics": metrics or {}, "start": {"kind": run.start, "path": str(run.ckpt_path or "")},
            "init_fingerprint": run.init_fingerprint, "kind": kind, "temperature": 1.0, "flags": run.flags,
            "stage_finished": False, "data_index": sd.index_arguments(cfg, run.recipe),
            "val_videos": sorted(r.rel for r in run.val_records),  # the exact list every later report reads
            "lineage_before": run.lineage_before,
            "faces": recorded_face_settings(cfg.face_detector, cfg.face_model, view=view_of(cfg.model))}


# ----------------------------------------------------------------------------- one phase

def train_phase(run: StageRun, phase: dict) -> dict:
    """One epoch over the loaded chunk; a signal saves _last.pt and stops the stage."""
    cfg, state, dist_info = run.cfg, run.state, run.dist_info
    loader, sampler = run.train.loader, run.train.sampler
    epoch_index = state["phase"]
    sampler.set_epoch(epoch_index, skip=state["batches_done"] * cfg.batch_size)
    desc = f"{cfg.model} {cfg.stage} epoch {epoch_index + 1}/{len(run.phases)}" + \
        (f" (chunk {phase['chunk']})" if phase["chunk"] is not None else "")
    reports.progress(cfg, "running", epoch=epoch_index + 1, epochs=len(run.phases), main=dist_info.main)
    bar = tqdm(total=len(loader), desc=desc, disable=not dist_info.main, leave=False)
    base = state["batches_done"]

    def on_step(batches: int) -> None:
        if time.monotonic() - run.last_save > SAVE_EVERY_S:
            state["batches_done"] = base + batches
            save(dist_info, checkpoint(run, "last"), run.paths.last)
            run.last_save = time.monotonic()

    try:
        stats = train_one_epoch(run.net, loader, run.train.loss_fn, run.opt, run.sched, run.precision,
                                augment=run.augment, grad_clip=run.recipe.grad_clip, progress=bar,
                                on_step=on_step, stop_requested=run.stop)
    except WorkerDied as e:
        state["batches_done"] = base + e.steps
        raise saved_after(run, e) from None
    finally:
        bar.close()
    if dist_info.enabled:  # the epoch's loss over every rank's samples, not rank 0's alone
        parts = distributed.gather_objects(dist_info, (stats["loss"] * stats["samples"], stats["samples"],
                                                       stats["samples_per_s"]))
        seen = sum(p[1] for p in parts)
        stats.update(loss=sum(p[0] for p in parts) / max(1, seen), samples=seen,
                     samples_per_s=sum(p[2] for p in parts))
    state["batches_done"] = base + stats["steps"]
    if stats["stopped"]:
        save(dist_info, checkpoint(run, "last"), run.paths.last)
        raise StageInterrupted(f"state saved to {run.paths.last}; rerun the same command with --resume")
    return stats


def validate_and_keep(run: StageRun, phase: dict, stats: dict) -> None:
    """Validate, log the epoch, keep it as best when it is, save _last.pt, report."""
    cfg, state, dist_info = run.cfg, run.state, run.dist_info
    try:
        metrics, _ = validate(run.net, run.val_loader, run.train.loss_fn, run.precision, dist_info)
    except WorkerDied as e:  # the epoch's steps are done (batches_done): --resume validates it
        raise saved_after(run, e) from None
    improved = better(metrics, state)
    epoch = state["phase"] + 1
    line = {"epoch": epoch, "epochs": len(run.phases), "chunk": phase["chunk"], "chunk_epoch": phase["epoch"] + 1,
            "lr": run.sched.get_last_lr()[0], "train": stats, "val": metrics, "best": improved, "time": now(),
            "validation": sd.index_arguments(cfg, run.recipe)["validation"]}
    report_epoch(cfg, metrics, line)
    state["history"].append({"epoch": epoch, "loss": stats["loss"], "val_loss": metrics["loss"],
                             "val_video_auc": metrics["video"]["auc"],
                             "collapsed": metrics["collapse"]["collapsed"]})
    state["phase"] += 1
    state["batches_done"] = 0
    if improved:
        state["best_auc"] = auc_or_floor(metrics)
        state["best_ok"] = not metrics["collapse"]["collapsed"]
        save(dist_info, checkpoint(run, "best", metrics), run.paths.best)
    save(dist_info, checkpoint(run, "last", metrics), run.paths.last)
    run.last_save = time.monotonic()
    log_to_board(run.board, epoch, stats, metrics)
    if dist_info.main:
        append_jsonl(run.paths.metrics, line)
        reports.progress(cfg, "running", epoch=epoch, epochs=len(run.phases), main=True,
                         best_auc=state["best_auc"], collapsed=metrics["collapse"]["collapsed"])


def saved_after(run: StageRun, died: WorkerDied) -> WorkerDied:
    """A dead DataLoader worker: _last.pt keeps where the epoch got to, so --resume continues."""
    save(run.dist_info, checkpoint(run, "last"), run.paths.last)
    return WorkerDied(f"{died} (the out-of-memory killer, often: try fewer --workers or a smaller "
                      f"--batch-size); state saved to {run.paths.last}; rerun the same command with --resume")


def log_to_board(board, epoch: int, stats: dict, metrics: dict) -> None:
    if board is None:
        return
    for key, value in (("train/loss", stats["loss"]), ("val/loss", metrics["loss"]),
                       ("val/video_auc", metrics["video"]["auc"]), ("val/frame_auc", metrics["frame"]["auc"])):
        board.add_scalar(key, value, epoch)
    board.flush()
