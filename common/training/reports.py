"""What a stage leaves for people to look at: the progress table and PNG plots."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence


from common.data.atomic import atomic_write

log = logging.getLogger(__name__)


def progress(cfg, state: str, *, epoch: int, epochs: int, main: bool, best_auc: float | None = None,
             collapsed: bool = False) -> None:
    """Refresh the progress section of the status file (rank 0 only; never fatal). `best_auc` is
    the kept epoch's validation video AUC (below 0: undefined, shown as "-")."""
    if not main or cfg.status_file is None:
        return
    from common.training.progress import live_row, update_status_file

    if collapsed and state == "running":
        state = f"collapsed at epoch {epoch}"
    auc = None if best_auc is None or not math.isfinite(best_auc) or best_auc < 0 else best_auc
    try:
        update_status_file(cfg.status_file, cfg.checkpoint_dir,
                           live_row(cfg.model, cfg.stage, state, epoch, epochs, auc))
    except Exception as e:  # a read-only status file must not stop training
        log.warning("could not update %s: %s", cfg.status_file, e)


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def roc_plot(curves: dict[str, tuple[Sequence[int], Sequence[float]]], path: Path, title: str) -> None:
    """ROC curves of several score sets on one set of axes (labels 1 = fake)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _figure()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (labels, scores) in curves.items():
        if len(set(labels)) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(labels, scores):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right", fontsize=8)
    save_png(fig, path)
    plt.close(fig)


def curves_plot(history: list[dict], path: Path, title: str) -> None:
    """Training loss, validation loss and validation video AUC per epoch."""
    plt = _figure()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    x = [h["epoch"] for h in history]
    a1.plot(x, [h["loss"] for h in history], "o-", label="train loss")
    a1.plot(x, [h["val_loss"] for h in history], "o-", label="val loss")
    a1.set(xlabel="epoch", title="loss")
    a1.legend()
    a2.plot(x, [h["val_video_auc"] for h in history], "o-", color="tab:green")
    a2.set(xlabel="epoch", ylim=(0, 1), title="validation video AUC")
    fig.suptitle(title)
    save_png(fig, path)
    plt.close(fig)


def stage_plots(paths, history: list[dict], ids, labels, logits, temperature: float) -> None:
    """`<stem>.roc.png` (validation, video level: the ROC of the margins, the same at any
    temperature) and `<stem>.curves.png`."""
    from common.training.metrics import frame_margins, video_scores

    stem = paths.best.with_suffix("")
    try:
        _, vl, vp = video_scores(ids, labels, frame_margins(logits))
        roc_plot({"validation (video)": (vl.tolist(), vp.tolist())}, stem.with_suffix(".roc.png"), stem.name)
        if history:
            curves_plot(history, stem.with_suffix(".curves.png"), stem.name)
    except Exception as e:  # plots are a report; a plotting problem must not fail the stage
        log.warning("could not write plots for %s: %s", stem.name, e)
