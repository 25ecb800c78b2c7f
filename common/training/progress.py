"""Training progress: one row per model and stage, read from checkpoints and metrics files.

`python -m common.status [--checkpoint-dir DIR]` prints the table and exits 1 when any
stage collapsed, failed or has an unreadable checkpoint. The stage scripts write the same table
into TRAINING_STATUS.md between two markers, leaving every other line of that file as it was.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from common.data.atomic import atomic_write
from common.recipes import FINAL_STAGE, MODEL_NAMES, RECIPES
from common.training.checkpoints import looks_whole, stage_paths

START = "<!-- training-progress:start (rewritten by the training scripts; edit outside) -->"
END = "<!-- training-progress:end -->"
BAD_STATES = ("failed", "collapsed", "unreadable")


def read_jsonl(path: Path) -> list[dict]:
    """The readable lines of a metrics file (a torn last line from a crash is ignored)."""
    if not path.is_file():
        return []
    lines = []
    for text in path.read_text(errors="replace").splitlines():
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            continue
    return lines


def stage_state(checkpoint_dir: Path, model: str, stage: str) -> dict:
    """State of one stage from its files: not started / stopped at e of n / done / failed / collapsed,
    the kept epoch's validation video AUC and how the stage validates."""
    paths = stage_paths(checkpoint_dir, model, stage)
    lines = read_jsonl(paths.metrics)
    epochs = [ln for ln in lines if "epoch" in ln and "val" in ln]
    row = {"model": model, "stage": stage, "state": "not started", "kept_auc": math.nan, "validation": "-",
           "epochs_done": len(epochs), "epochs_total": epochs[-1].get("epochs") if epochs else None,
           "checkpoint": paths.best.name if paths.best.exists() else "-", "updated": "-"}
    if not lines:
        return row
    row["updated"] = lines[-1].get("time", "-")
    row["kept_auc"] = kept_auc(lines)
    row["validation"] = next((ln.get("validation") or (ln.get("final") or {}).get("validation")
                              for ln in reversed(lines) if ln.get("validation") or "final" in ln), None) or "-"
    last = lines[-1]
    if "failed" in last:
        row["state"] = "failed"
    elif "final" in last:
        row["state"] = "collapsed" if last["final"].get("collapsed") else "done"
    elif epochs and epochs[-1]["val"]["collapse"]["collapsed"]:
        row["state"] = f"collapsed at epoch {epochs[-1]['epoch']}"
    elif epochs:
        row["state"] = f"stopped after epoch {epochs[-1]['epoch']} of {row['epochs_total'] or '?'}"
    return row


def mark_unreadable(row: dict, checkpoint_dir: Path) -> dict:
    """A checkpoint of the row's stage that is not a whole file (truncated by a full disk or a
    copy) overrides any state: it needs attention, however the metrics file ended."""
    paths = stage_paths(checkpoint_dir, row["model"], row["stage"])
    files = (paths.best, paths.last) + ((paths.student,) if row["stage"] == FINAL_STAGE else ())
    broken = [p.name for p in files if p.exists() and not looks_whole(p)]
    if broken:
        row["state"] = "unreadable: " + ", ".join(broken)
    return row


def kept_auc(lines: list[dict]) -> float:
    """Validation video AUC of the epoch the stage keeps: the `final` line's (the kept epoch,
    calibrated; AUC does not change with the temperature), else the last epoch marked best."""
    final = next((ln["final"] for ln in reversed(lines) if "final" in ln), None)
    if final is not None and "val" in final:
        auc = final["val"]["video"].get("auc")
    else:
        kept = [ln for ln in lines if ln.get("best") and "val" in ln]
        auc = kept[-1]["val"]["video"].get("auc") if kept else None
    return float(auc) if isinstance(auc, (int, float)) and math.isfinite(auc) else math.nan


def all_states(checkpoint_dir: Path, live: dict | None = None) -> list[dict]:
    rows = []
    for model in MODEL_NAMES:
        for stage in RECIPES:
            row = mark_unreadable(stage_state(checkpoint_dir, model, stage), checkpoint_dir)
            if live and live["model"] == model and live["stage"] == stage:
                row.update({k: v for k, v in live.items() if v is not None})
            rows.append(row)
    return rows


def render_table(rows: list[dict]) -> str:
    out = ["| model | stage | state | kept epoch's val video AUC | validation | epochs done | checkpoint | "
           "last update |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kept = r.get("kept_auc")
        auc = "-" if kept is None or math.isnan(kept) else f"{kept:.4f}"
        out.append(f"| {r['model'].upper()} | {r['stage']} | {r['state']} | {auc} | {r.get('validation') or '-'} | "
                   f"{r['epochs_done']} | {r['checkpoint']} | {r['updated']} |")
    return "\n".join(out)


def update_status_file(path: Path, checkpoint_dir: Path, live: dict | None = None) -> None:
    """Rewrite only the text between the markers (appending the section if it is absent)."""
    table = render_table(all_states(Path(checkpoint_dir), live))
    section = f"{START}\nCheckpoint folder: `{checkpoint_dir}`\n\n{table}\n{END}"
    text = Path(path).read_text() if Path(path).exists() else "# Training status\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n## Training progress\n\n" + section + "\n"
    atomic_write(path, lambda f: f.write(text), mode="w")


def live_row(model: str, stage: str, state: str, epoch: int, epochs: int,
             kept_auc: float | None = None) -> dict:
    label = f"running epoch {epoch} of {epochs}" if state == "running" else state
    return {"model": model, "stage": stage, "state": label, "kept_auc": kept_auc,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m common.status",
                                description="Print the training progress table from checkpoint files; "
                                            "exit 1 when a stage failed, collapsed or has an unreadable checkpoint.")
    p.add_argument("--checkpoint-dir", type=Path,
                   help="the folder the stage scripts wrote into (default: checkpoints, as theirs)")
    args = p.parse_args(argv)
    if args.checkpoint_dir is None:  # the scripts' default: before any training it is simply not there yet
        args.checkpoint_dir = Path("checkpoints")
        if not args.checkpoint_dir.is_dir():
            print(f"nothing trained here yet: no {args.checkpoint_dir}/ folder (the stage scripts' "
                  f"default --checkpoint-dir); pass --checkpoint-dir DIR for another one")
            return 0
    if not args.checkpoint_dir.is_dir():  # named on the command line: a typo, most likely
        print(f"error: checkpoint folder {args.checkpoint_dir} does not exist", file=sys.stderr)
        return 2
    rows = all_states(args.checkpoint_dir)
    print(render_table(rows))
    bad = [r for r in rows if r["state"].startswith(BAD_STATES)]
    for r in bad:
        print(f"attention: {r['model'].upper()} {r['stage']} is {r['state']}", file=sys.stderr)
    return 1 if bad else 0
