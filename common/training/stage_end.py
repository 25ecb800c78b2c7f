"""How a stage ends: the best epoch calibrated and written, or the failure recorded.

`finish` runs after the last epoch: best weights -> temperature on the validation logits ->
the Celeb-DF test list report (never used for selection) -> the student file after the
final stage. `better` is the one rule that picks the best epoch.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch

from common.errors import UserError
from common.recipes import FINAL_STAGE
from common.training import distributed, reports
from common.training import stage_data as sd
from common.training.checkpoints import load_checkpoint, save_checkpoint
from common.training.engine import predict
from common.training.held_out import lineage_of
from common.training.metrics import evaluate, fit_temperature
from common.training.run_files import append_jsonl, data_summary, skipped_path

log = logging.getLogger("train")


class TrainingFailed(RuntimeError):
    """Training could not go on (non-finite loss, too many bad videos, a failed write)."""


def failed(cfg, paths, dist_info, why: str) -> TrainingFailed:
    """Record the failure where possible (the disk may be full) and return the exception."""
    if dist_info.main:
        try:
            append_jsonl(paths.metrics, {"failed": why, "time": now()})
            reports.progress(cfg, "failed", epoch=0, epochs=0, main=True)
        except (OSError, UserError) as e:
            log.warning("could not record the failure in %s: %s", paths.metrics, e)
    return TrainingFailed(why)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def save(dist_info, obj: dict, path: Path) -> None:
    """Rank 0 writes; the others go on (they hold the same weights under DDP)."""
    if dist_info.main:
        save_checkpoint(obj, path)


# ----------------------------------------------------------------------------- selection

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


# ----------------------------------------------------------------------------- finish

def finish(run) -> dict:
    """After the last epoch of a stage.StageRun: calibrate the best epoch, report, write."""
    refuse_if_all_collapsed(run)
    best = distributed.broadcast_object(run.dist_info, load_checkpoint(run.paths.best, run.cfg.model)
                                        if run.dist_info.main else None)
    run.model.load_state_dict(best["model"])
    ids, labels, logits = predict(run.net, run.val_loader, run.precision, run.dist_info)
    temperature = fit_temperature(logits, torch.tensor(labels), ids)
    calibrated = evaluate(ids, labels, logits, temperature)
    best["temperature"] = temperature
    best["stage_finished"] = True
    best["lineage"] = lineage_of(best)  # this stage and every stage before it: what evaluate checks
    best["metrics"] = dict(best["metrics"], calibrated=calibrated, temperature=temperature)
    final = {"stage": run.cfg.stage, "temperature": temperature, "val": calibrated,
             "best_val_video_auc": run.state["best_auc"], "collapsed": calibrated["collapse"]["collapsed"],
             "init_fingerprint": best.get("init_fingerprint"), "validation": best["data_index"].get("validation"),
             "data": data_summary(run.records, run.cache, run.state["skipped"], skipped_path(run.paths))}
    test = test_list_report(run, temperature)
    if test is not None:
        final["test"] = test
    if run.dist_info.main:
        write_final(run, best, final, (ids, labels, logits))
    log_summary(run, final)
    return final


def refuse_if_all_collapsed(run) -> None:
    """Selection prefers any non-collapsed epoch; when none exists the stage has failed."""
    if run.state.get("best_ok", True):
        return
    why = f"every epoch collapsed (best validation video AUC {run.state['best_auc']:.3f})"
    if run.dist_info.main:
        save_checkpoint(dict(load_checkpoint(run.paths.best, run.cfg.model), stage_failed=why), run.paths.best)
    raise failed(run.cfg, run.paths, run.dist_info, f"{why}; no student written and {run.paths.best.name} is "
                 "marked unfinished (see the COLLAPSE lines above)")


def test_list_report(run, temperature: float) -> dict | None:
    """Celeb-DF's official test list, scored once at the end (report only, not selection)."""
    test_records = [r for r in run.records if r.split == "test"]
    if run.recipe.dataset != "celebdf" or not test_records:
        return None
    cfg, dist_info = run.cfg, run.dist_info
    sd.ensure_cached(test_records, run.cache, cfg, dist_info, "test list (report only)", run.stop)
    run.stop.check_extraction()
    test_set = sd.samples_for(test_records, run.cache, cfg, run.recipe, train=False)
    loader = sd.eval_loader(test_set, cfg, dist_info, run.precision.device)
    ids, labels, logits = predict(run.net, loader, run.precision, dist_info)
    report = evaluate(ids, labels, logits, temperature)
    log.info("Celeb-DF test list (report only, not used for selection): video AUC %.4f",
             report["video"]["auc"])
    return report


def write_final(run, best: dict, final: dict, scores: tuple) -> None:
    """Rank 0: the calibrated best checkpoint, the final metrics line, the student file
    (after the final stage), the plots of the validation `scores` and the progress row."""
    cfg, paths = run.cfg, run.paths
    save_checkpoint(best, paths.best)
    append_jsonl(paths.metrics, {"final": final, "time": now()})
    if cfg.stage == FINAL_STAGE:
        save_checkpoint({"model": best["model"], "model_options": best["model_options"],
                         "temperature": final["temperature"], "metrics": final, "stage": cfg.stage,
                         "config": best["config"], "kind": "student", "stage_finished": True,
                         "data_index": best["data_index"], "val_videos": best["val_videos"],
                         "lineage": best["lineage"], "faces": best.get("faces")},
                        paths.student)
    reports.stage_plots(paths, run.state["history"], *scores, final["temperature"])
    epochs = len(run.state["history"])
    reports.progress(cfg, "collapsed" if final["collapsed"] else "done", epoch=epochs, epochs=epochs,
                     main=True, best_auc=run.state["best_auc"], collapsed=final["collapsed"])


def log_summary(run, final: dict) -> None:
    d = final["data"]
    log.info("data: %d videos, %d skipped (%s)%s, %d with an audio track that failed to decode", d["videos"],
             sum(d["skipped"].values()), ", ".join(f"{k} {v}" for k, v in sorted(d["skipped"].items())) or "none",
             f", listed in {d['skipped_list']}" if d["skipped_list"] else "", d["audio_failed"])
    log.info("done: best validation video AUC %.4f, temperature %.3f, checkpoint %s",
             run.state["best_auc"], final["temperature"], run.paths.best)
