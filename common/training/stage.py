"""One training stage end to end: resolve the start point, data, epochs, checkpoints, calibration.

Read top to bottom, `train_stage` is the recipe's life: where it starts from (previous
stage, --init, --resume), what it trains on (one dataset, or DFDC chunk by chunk), how the
best checkpoint is chosen (validation video AUC) and what it leaves on disk.
"""
from __future__ import annotations

import errno
import logging
import math
import signal
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from common.training import distributed, reports
from common.training.checkpoints import (CheckpointWriteError, capture_rng, load_checkpoint, restore_rng,
                                save_checkpoint, stage_paths, weights_fingerprint)
from common.chunks import check_chunks, iter_chunks
from common.data.datasets import part_dirs
from common.training.engine import (NonFiniteLossError, make_optimizer, make_precision, predict,
                           train_one_epoch, validate)
from common.errors import CheckpointError, UserError
from common.faces.extraction import recorded_face_settings
from common.faces.cache import CacheWriteError
from common.losses import build_loss
from common.training.metrics import evaluate, fit_temperature
from common.model import MODEL_NAMES, build_student, lr_multipliers, student_from_options
from common.recipes import FINAL_STAGE, RECIPES, script_name
from common.training import stage_data as sd
from common.training.run_guard import acquire, check_not_overwriting, check_resume_flags, release, run_flags
from common.faces.views import view_of
from common.training.run_files import (append_jsonl, check_writable, data_summary, missing_rels, remove_stale_temps,
                               report_epoch, skipped_path, tensorboard_writer, write_skipped)

log = logging.getLogger("train")
SAVE_EVERY_S = 20 * 60  # mid-epoch _last.pt, so a killed session loses at most this much
# A write that failed because of the disk, not the program: the run stops (exit 3), cleanly.
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)


class TrainingFailed(RuntimeError):
    """Training could not go on (non-finite loss, too many bad videos, a failed write)."""


class StageInterrupted(RuntimeError):
    """SIGINT/SIGTERM: state was saved to _last.pt; rerun with --resume."""


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but no CUDA device is available")
    if choice == "cpu" or not torch.cuda.is_available():
        log.warning("training on the CPU%s", "" if choice == "cpu" else " (no CUDA device found)")
        return torch.device("cpu")
    return torch.device("cuda")


def resolve_start(cfg, recipe, paths) -> tuple[str, dict | None, Path | None]:
    """Where weights come from: ('resume'|'init'|'previous'|'scratch', checkpoint, its path)."""
    if cfg.resume:
        if paths.last.exists():
            ckpt = load_checkpoint(paths.last, cfg.model)
            check_resume_flags(run_flags(cfg), ckpt.get("flags"), paths.last)
            return "resume", ckpt, paths.last
        # Killed before its first checkpoint (e.g. during face extraction): a restarted job
        # passes --resume anyway, so begin as a fresh run would (the face cache is kept).
        log.warning("--resume: %s does not exist yet (the run stopped before its first checkpoint); "
                    "starting the stage from the beginning", paths.last)
    if not cfg.overwrite:
        finished = paths.best.exists() and load_checkpoint(paths.best, cfg.model).get("stage_finished") is True
        check_not_overwriting(paths.best, paths.last, finished)
    if cfg.init is not None:
        return "init", load_checkpoint(cfg.init, cfg.model), cfg.init
    if recipe.previous is None:
        return "scratch", None, None
    prev = stage_paths(cfg.checkpoint_dir, cfg.model, recipe.previous).best
    if not prev.exists():
        raise CheckpointError(f"{prev} not found: run {script_name(cfg.model, recipe.previous)} first "
                              "(or pass --init PATH)")
    ckpt = load_checkpoint(prev, cfg.model)
    check_finished(ckpt, prev)
    return "previous", ckpt, prev


def check_finished(ckpt: dict, path: Path) -> None:
    """Refuse to start from a stage that stopped early, failed or collapsed (unless --init)."""
    if ckpt.get("stage_finished") is True:
        return
    why = ckpt.get("stage_failed") or ("it stopped before its last epoch" if "stage_finished" in ckpt
                                       else "it does not record that its stage finished")
    raise CheckpointError(f"{path} is from an unfinished stage ({why}); finish that stage with --resume, "
                          f"or pass --init {path} to start from it anyway")


def build_model(cfg, start: str, ckpt: dict | None):
    if ckpt is None:
        return build_student(cfg.model, backbone=cfg.backbone, pretrained=cfg.pretrained,
                             clip_len=cfg.clip_len)
    model = student_from_options(ckpt["model_options"])
    model.load_state_dict(ckpt["model"], strict=True)  # never a silent partial load
    log.info("weights loaded (%s) from a %s checkpoint, backbone %s", start,
             ckpt.get("stage", "?"), ckpt["model_options"].get("backbone"))
    return model


class StopFlag:
    """Set by SIGINT/SIGTERM; checked after each optimiser step (agreed across ranks)."""

    def __init__(self, dist_info, device: torch.device = torch.device("cpu")):
        self.dist_info, self.raised = dist_info, False
        self.device = device  # NCCL reduces CUDA tensors only
        self._previous = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def close(self) -> None:
        """Give the signals back to whoever had them (in-process callers: tests, notebooks)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handler(self, signum, frame):
        if self.raised:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.raised = True
        log.warning("signal %d: saving state after this step, then stopping", signum)

    def any_rank(self) -> bool:
        """Whether a signal reached any rank (a collective under torchrun: all ranks call it)."""
        if not self.dist_info.enabled:
            return self.raised
        flag = torch.tensor([1.0 if self.raised else 0.0], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def __call__(self) -> bool:
        return self.any_rank()

    def check_extraction(self) -> None:
        """After a face-cache build: stop now if a signal came (finished entries are kept)."""
        if self.any_rank():
            raise StageInterrupted("stopped during face extraction (finished videos stay cached); "
                                   "rerun the same command with --resume")


def plan_phases(cfg, recipe, records) -> list[dict]:
    """(chunk, epoch) pairs in training order; one phase = one epoch over one chunk's videos."""
    epochs = cfg.epochs or recipe.epochs
    if not recipe.chunks:
        return [{"chunk": None, "position": 0, "epoch": e} for e in range(epochs)]
    order = cfg.chunks or recipe.chunks
    return [{"chunk": ch.number, "position": ch.position, "epoch": e}
            for ch in iter_chunks(records, order) for e in range(epochs)]


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
    stop = StopFlag(dist_info, device)
    lock = None
    try:
        lock = take_lock(cfg, paths, dist_info)
        return _train(cfg, recipe, device, dist_info, paths, stop)
    except (NonFiniteLossError, sd.TooManyBadVideos, CheckpointWriteError, CacheWriteError) as e:
        raise failed(cfg, paths, dist_info, str(e)) from e
    except OSError as e:  # metrics, plots, status file on a full disk
        if e.errno not in DISK_ERRNOS:
            raise
        raise failed(cfg, paths, dist_info, f"a write failed: {e}") from e
    finally:
        stop.close()
        if lock is not None:
            release(lock)
        distributed.cleanup(dist_info)


def take_lock(cfg, paths, dist_info) -> Path | None:
    """Rank 0 locks the stage against a second run in the same folder; every rank learns
    whether it may go on (a refusal on rank 0 alone would leave the others waiting)."""
    lock, refusal = None, None
    if dist_info.main:
        try:
            lock = acquire(paths.best.with_suffix(".lock"), f"{cfg.model} {cfg.stage}")
        except UserError as e:
            refusal = str(e)
    refusal = distributed.broadcast_object(dist_info, refusal)
    if refusal:
        raise UserError(refusal)
    return lock


def failed(cfg, paths, dist_info, why: str) -> TrainingFailed:
    """Record the failure where possible (the disk may be full) and return the exception."""
    if dist_info.main:
        try:
            append_jsonl(paths.metrics, {"failed": why, "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
            reports.progress(cfg, "failed", epoch=0, epochs=0, main=True)
        except (OSError, UserError) as e:
            log.warning("could not record the failure in %s: %s", paths.metrics, e)
    return TrainingFailed(why)


def _train(cfg, recipe, device, dist_info, paths, stop: StopFlag) -> dict:
    torch.manual_seed(cfg.seed % 2**63)
    flags = run_flags(cfg)  # as given: clip_len may be inherited from the start checkpoint below
    start, ckpt, ckpt_path = resolve_start(cfg, recipe, paths)  # fail fast, before any data work
    if dist_info.main:
        check_writable(cfg.checkpoint_dir)
        remove_stale_temps(paths)
    if recipe.chunks:
        cfg.chunks = tuple(check_chunks(cfg.chunks or recipe.chunks, part_dirs(cfg.data),
                                        cfg.skip_missing_chunks))
    records = sd.cap_per_split(sd.index_records(cfg, recipe), cfg.max_videos, cfg.seed,
                               key=lambda r: (r.split, r.chunk if r.split == "train" else None))
    log.info("%s: %s", recipe.title, sd.split_counts(records))
    if start in ("resume", "previous", "init"):
        cfg.clip_len = ckpt["model_options"].get("clip_len", cfg.clip_len)
    model = build_model(cfg, start, ckpt).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    init_fingerprint = weights_fingerprint(model.state_dict())

    cache = sd.make_cache(cfg, recipe)
    val_records = [r for r in records if r.split == "val"]
    sd.ensure_cached(val_records, cache, cfg, dist_info, "validation", stop)
    stop.check_extraction()
    val_set = sd.samples_for(val_records, cache, cfg, recipe, train=False)
    skipped_file = skipped_path(paths)
    write_skipped(skipped_file, sorted(missing_rels(val_records, cache)), dist_info, cache)
    sd.check_bad_fraction(val_set, len(val_records), cfg.max_bad_fraction, "val", skipped_file)
    val_loader = sd.eval_loader(val_set, cfg, dist_info, device)

    phases = plan_phases(cfg, recipe, records)
    per_phase_steps = [max(1, math.ceil(len([r for r in records if r.split == "train" and
                                             (p["chunk"] is None or r.chunk == p["chunk"])])
                                        * cfg.frames_per_video / dist_info.world / cfg.batch_size))
                       for p in phases]
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if dist_info.enabled else model
    opt, sched = make_optimizer(model, cfg.lr or recipe.lr, recipe.weight_decay, sum(per_phase_steps),
                                recipe.warmup_fraction, recipe.lr_floor, lr_multipliers(cfg.model, recipe))
    precision = make_precision(device, cfg.amp)
    state = {"phase": 0, "batches_done": 0, "best_auc": -math.inf, "history": [],
             "skipped": sorted(missing_rels(val_records, cache))}
    if start == "resume":
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"]:  # empty when the interrupted run had no fp16 scaler (CPU, bf16)
            precision.scaler.load_state_dict(ckpt["scaler"])
        state.update(ckpt["position"])
        restore_rng(ckpt["rng"])
        init_fingerprint = ckpt.get("init_fingerprint", init_fingerprint)
        log.info("resuming at phase %d/%d (+%d batches)", state["phase"] + 1, len(phases), state["batches_done"])

    val_rels = sorted(r.rel for r in val_records)  # the exact list every later report reads

    def checkpoint(kind: str, metrics: dict | None = None) -> dict:
        return {"model": model.state_dict(), "model_options": model.options, "stage": cfg.stage,
                "recipe": recipe.as_dict(), "config": {k: str(v) for k, v in asdict(cfg).items()},
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "scaler": precision.scaler.state_dict(), "rng": capture_rng(), "position": dict(state),
                "metrics": metrics or {}, "start": {"kind": start, "path": str(ckpt_path or "")},
                "init_fingerprint": init_fingerprint, "kind": kind, "temperature": 1.0, "flags": flags,
                "stage_finished": False, "data_index": sd.index_arguments(cfg, recipe),
                "val_videos": val_rels, "faces": recorded_face_settings(cfg.face_detector, cfg.face_model,
                                                                 view=view_of(cfg.model))}

    if cfg.overwrite and start != "resume" and dist_info.main:
        # Asked for, and only now that data and model are known good: the old run's files
        # must not mix with the new one's.
        for old in (paths.best, paths.last, paths.metrics):
            old.unlink(missing_ok=True)
    board = tensorboard_writer(paths, dist_info)
    last_save = time.monotonic()
    train_set = loader = sampler = loss_fn = None
    augment = sd.train_augmenter(recipe, cfg.model, cfg.image_size)  # on the device, one draw per clip
    current_chunk = object()
    while state["phase"] < len(phases):
        phase = phases[state["phase"]]
        if phase["chunk"] != current_chunk or train_set is None:
            current_chunk = phase["chunk"]
            train_records = [r for r in records if r.split == "train" and
                             (current_chunk is None or r.chunk == current_chunk)]
            sd.ensure_cached(train_records, cache, cfg, dist_info,
                             "training" + (f" chunk {current_chunk}" if current_chunk is not None else ""),
                             stop)
            stop.check_extraction()  # at a phase boundary: _last.pt already holds this state
            train_set = sd.samples_for(train_records, cache, cfg, recipe, train=True)
            state["skipped"] = sorted(set(state["skipped"]) | missing_rels(train_records, cache))
            write_skipped(skipped_file, state["skipped"], dist_info, cache)
            sd.check_bad_fraction(train_set, len(train_records), cfg.max_bad_fraction, "train", skipped_file)
            counts = np.bincount(train_set.labels, minlength=2).tolist()
            loss_fn = build_loss(recipe.loss, class_counts=counts, alpha=recipe.focal_alpha,
                                 gamma=recipe.focal_gamma).to(device)  # class weights too
            loader, sampler = sd.train_loader(train_set, cfg, recipe, dist_info, device)
        epoch_index = state["phase"]
        sampler.set_epoch(epoch_index, skip=state["batches_done"] * cfg.batch_size)
        desc = f"{cfg.model} {cfg.stage} epoch {epoch_index + 1}/{len(phases)}" + \
            (f" (chunk {phase['chunk']})" if phase["chunk"] is not None else "")
        reports.progress(cfg, "running", epoch=epoch_index + 1, epochs=len(phases), main=dist_info.main)
        bar = tqdm(total=len(loader), desc=desc, disable=not dist_info.main, leave=False)

        base = state["batches_done"]

        def on_step(batches: int) -> None:
            nonlocal last_save
            if time.monotonic() - last_save > SAVE_EVERY_S:
                state["batches_done"] = base + batches
                save(dist_info, checkpoint("last"), paths.last)
                last_save = time.monotonic()

        stats = train_one_epoch(net, loader, loss_fn, opt, sched, precision, augment=augment,
                                grad_clip=recipe.grad_clip, progress=bar,
                                on_step=on_step, stop_requested=stop)
        bar.close()
        if dist_info.enabled:  # the epoch's loss over every rank's samples, not rank 0's alone
            parts = distributed.gather_objects(dist_info, (stats["loss"] * stats["samples"], stats["samples"],
                                                           stats["samples_per_s"]))
            seen = sum(p[1] for p in parts)
            stats.update(loss=sum(p[0] for p in parts) / max(1, seen), samples=seen,
                         samples_per_s=sum(p[2] for p in parts))
        state["batches_done"] = base + stats["steps"]
        if stats["stopped"]:
            save(dist_info, checkpoint("last"), paths.last)
            raise StageInterrupted(f"state saved to {paths.last}; rerun the same command with --resume")
        metrics, _ = validate(net, val_loader, loss_fn, precision, dist_info)
        improved = better(metrics, state)
        line = {"epoch": epoch_index + 1, "epochs": len(phases), "chunk": phase["chunk"], "chunk_epoch": phase["epoch"] + 1,
                "lr": sched.get_last_lr()[0], "train": stats, "val": metrics, "best": improved,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        report_epoch(cfg, metrics, line)
        state["history"].append({"epoch": epoch_index + 1, "loss": stats["loss"], "val_loss": metrics["loss"],
                                 "val_video_auc": metrics["video"]["auc"],
                                 "collapsed": metrics["collapse"]["collapsed"]})
        state["phase"] += 1
        state["batches_done"] = 0
        if improved:
            state["best_auc"] = auc_or_floor(metrics)
            state["best_ok"] = not metrics["collapse"]["collapsed"]
            save(dist_info, checkpoint("best", metrics), paths.best)
        save(dist_info, checkpoint("last", metrics), paths.last)
        last_save = time.monotonic()
        if board is not None:
            for key, value in (("train/loss", stats["loss"]), ("val/loss", metrics["loss"]),
                               ("val/video_auc", metrics["video"]["auc"]), ("val/frame_auc", metrics["frame"]["auc"])):
                board.add_scalar(key, value, epoch_index + 1)
            board.flush()
        if dist_info.main:
            append_jsonl(paths.metrics, line)
            reports.progress(cfg, "running", epoch=epoch_index + 1, epochs=len(phases), main=True,
                             best_auc=state["best_auc"], collapsed=metrics["collapse"]["collapsed"])
    return finish(cfg, recipe, model, net, precision, val_loader, records, cache, paths, dist_info, state, stop)


def finish(cfg, recipe, model, net, precision, val_loader, records, cache, paths, dist_info, state,
           stop: StopFlag | None = None) -> dict:
    """Best weights -> temperature on validation logits -> test report (Celeb-DF) -> student file."""
    if not state.get("best_ok", True):  # selection prefers any non-collapsed epoch: none exists
        why = f"every epoch collapsed (best validation video AUC {state['best_auc']:.3f})"
        if dist_info.main:
            save_checkpoint(dict(load_checkpoint(paths.best, cfg.model), stage_failed=why), paths.best)
        raise failed(cfg, paths, dist_info, f"{why}; no student written and {paths.best.name} is "
                     "marked unfinished (see the COLLAPSE lines above)")
    best = distributed.broadcast_object(dist_info, load_checkpoint(paths.best, cfg.model)
                                        if dist_info.main else None)
    model.load_state_dict(best["model"])
    ids, labels, logits = predict(net, val_loader, precision, dist_info)
    temperature = fit_temperature(logits, torch.tensor(labels), ids)
    calibrated = evaluate(ids, labels, logits, temperature)
    best["temperature"] = temperature
    best["stage_finished"] = True
    best["metrics"] = dict(best["metrics"], calibrated=calibrated, temperature=temperature)
    final = {"stage": cfg.stage, "temperature": temperature, "val": calibrated,
             "best_val_video_auc": state["best_auc"], "collapsed": calibrated["collapse"]["collapsed"],
             "init_fingerprint": best.get("init_fingerprint"),
             "data": data_summary(records, cache, state["skipped"], skipped_path(paths))}
    test_records = [r for r in records if r.split == "test"]
    if recipe.dataset == "celebdf" and test_records:
        sd.ensure_cached(test_records, cache, cfg, dist_info, "test list (report only)", stop)
        if stop is not None:
            stop.check_extraction()
        test_set = sd.samples_for(test_records, cache, cfg, recipe, train=False)
        t_ids, t_labels, t_logits = predict(net, sd.eval_loader(test_set, cfg, dist_info, precision.device),
                                            precision, dist_info)
        final["test"] = evaluate(t_ids, t_labels, t_logits, temperature)
        log.info("Celeb-DF test list (report only, not used for selection): video AUC %.4f",
                 final["test"]["video"]["auc"])
    if dist_info.main:
        save_checkpoint(best, paths.best)
        append_jsonl(paths.metrics, {"final": final, "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
        if cfg.stage == FINAL_STAGE:
            save_checkpoint({"model": best["model"], "model_options": best["model_options"],
                             "temperature": temperature, "metrics": final, "stage": cfg.stage,
                             "config": best["config"], "kind": "student", "stage_finished": True,
                             "data_index": best["data_index"], "val_videos": best["val_videos"],
                             "faces": best.get("faces")},
                            paths.student)
        reports.stage_plots(paths, state["history"], ids, labels, logits, temperature)
        reports.progress(cfg, "collapsed" if final["collapsed"] else "done", epoch=len(state["history"]),
                         epochs=len(state["history"]), main=True, best_auc=state["best_auc"],
                         collapsed=final["collapsed"])
    d = final["data"]
    log.info("data: %d videos, %d skipped (%s)%s, %d with an audio track that failed to decode", d["videos"],
             sum(d["skipped"].values()), ", ".join(f"{k} {v}" for k, v in sorted(d["skipped"].items())) or "none",
             f", listed in {d['skipped_list']}" if d["skipped_list"] else "", d["audio_failed"])
    log.info("done: best validation video AUC %.4f, temperature %.3f, checkpoint %s",
             state["best_auc"], temperature, paths.best)
    return final


def selection_key(metrics: dict) -> tuple[int, float]:
    """Order of preference between epochs: any non-collapsed epoch beats every collapsed one,
    then the higher validation video AUC."""
    return (0 if metrics["collapse"]["collapsed"] else 1, auc_or_floor(metrics))


def better(metrics: dict, state: dict) -> bool:
    """Whether this epoch beats the best so far (state: best_auc, best_ok)."""
    if state["best_auc"] == -math.inf:
        return True
    return selection_key(metrics) > (1 if state.get("best_ok", True) else 0, state["best_auc"])


def auc_or_floor(metrics: dict) -> float:
    """Validation video AUC, or a floor below any real AUC when it is undefined (one class)."""
    auc = metrics["video"]["auc"]
    return -1.0 if auc is None or math.isnan(auc) else float(auc)


def save(dist_info, obj: dict, path: Path) -> None:
    """Rank 0 writes; the others go on (they hold the same weights under DDP)."""
    if dist_info.main:
        save_checkpoint(obj, path)
