"""`python -m common.demo [OUT]`: the whole job on generated data, run the way a user runs it.

    python -m common.demo                # writes into ./demo-run
    python -m common.demo /tmp/demo      # or into a new (or empty) folder of your choice

It makes the sample data (common.sample_data, size "demo"), runs the fifteen stage scripts
as subprocesses with a small backbone and small crops, then `common.status`,
`common.ensemble fit`, `common.evaluate` (held-out DFDC part) and `common.ensemble predict`
on two held-out videos, and ends with one table: every student's validation video AUC per
stage and the ensemble's held-out video AUC. Each step's output goes to OUT/logs/.

Before any data is made it checks the output folder, the face detector's model and the free
disk (one line and exit 2, or 3 for too little disk). Exit 0 when every step succeeded and
every bar is met: no student collapsed, the ensemble's held-out video AUC is at least
ENSEMBLE_BAR and `common.status` exits 0. Otherwise one line says what failed (exit 1).
"""
from __future__ import annotations

import argparse
import errno
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from common.recipes import DEFAULTS, RECIPES, STAGES, script_name

REPO = Path(__file__).resolve().parents[1]
MODELS = ("bg", "av", "cm", "rr", "tm")  # the README's order
ENSEMBLE_BAR = 0.9
MARKER = ".demo-run"  # written into OUT first: only a folder holding it is ever replaced (--overwrite)
# What a run writes is mostly checkpoints: 15 stages x (best + _last.pt, each mobilenet_v3_small's
# ~10 MB of weights plus Adam's two moments, 30 MB) plus five 10 MB students; the tiny profile
# wrote 871 MB in all, the demo profile adds some data and cache: about 1 GB. Twice that must be
# free, so a run never ends on a full disk.
NEEDS_FREE_BYTES = 2 * 1024 ** 3
# Each stage's column is the validation video AUC of the epoch the stage kept (its checkpoint).
TITLES = {"stage1_faceforensics": "FF++ val (kept epoch)", "stage2_celebdf": "Celeb-DF val (kept epoch)",
          "stage4_dfdc": "DFDC val (kept epoch)"}


@dataclass(frozen=True)
class Profile:
    """The small settings the demo trains with (every one of them an ordinary script flag)."""
    sample_size: str = "demo"          # common.data.synthetic.SIZES
    backbone: str = "mobilenet_v3_small"
    image_size: int = 48
    frames_per_video: int = 4
    clip_len: int = 3
    batch_size: int = 16
    workers: int = 0                   # 2 CPU cores: worker processes cost more than they give
    # stage -> epochs (absent: the recipe's); about half the recipes' 6 / 5 / 2 per chunk
    epochs: dict = field(default_factory=lambda: {"stage1_faceforensics": 3, "stage2_celebdf": 2,
                                                  "stage4_dfdc": 1})
    train_parts: tuple[int, ...] = (0,)
    val_part: int = 1                  # validation and the ensemble fit: a whole part no chunk trains on
    held_out_part: int = 2

    def stage_flags(self, stage: str) -> list[str]:
        flags = ["--backbone", self.backbone, "--pretrained", "none", "--image-size", str(self.image_size),
                 "--frames-per-video", str(self.frames_per_video), "--clip-len", str(self.clip_len),
                 "--batch-size", str(self.batch_size), "--workers", str(self.workers)]
        if stage in self.epochs:
            flags += ["--epochs", str(self.epochs[stage])]
        if RECIPES[stage].chunks:
            flags += ["--chunks", ",".join(map(str, self.train_parts)), "--val-parts", str(self.val_part)]
        return flags


PROFILES = {
    "demo": Profile(),
    # the plumbing on the tiny test tree (plus a held-out DFDC part): seconds per stage, no
    # claim that it learns
    "tiny": Profile(sample_size="smoke", image_size=32, frames_per_video=2, clip_len=3, batch_size=8,
                    epochs={s: 1 for s in STAGES}),
}


@dataclass(frozen=True)
class Step:
    name: str                 # what the progress line and the failure line call it
    argv: list[str]           # after the python executable
    log: str                  # file name under OUT/logs
    show: bool = False        # print its output (status, evaluate, predict)


class DemoFailed(Exception):
    """One line for the user: which step or bar failed, and where to look."""


# ----------------------------------------------------------------------------- the plan

def plan(out: Path, profile: Profile) -> list[Step]:
    """Every command after the sample data, in order, as a user would type it."""
    data, ck, cache = out / "data", out / "checkpoints", out / "cache"
    common = ["--checkpoint-dir", str(ck), "--cache-dir", str(cache)]
    steps = []
    for model in MODELS:
        for stage in STAGES:
            script = script_name(model, stage)
            argv = [script, "--data", str(data / RECIPES[stage].dataset), *common,
                    "--status-file", str(out / "TRAINING_STATUS.md"), *profile.stage_flags(stage)]
            steps.append(Step(script, argv, f"{model}_{stage}.log"))
    dfdc, workers = str(data / "dfdc"), ["--workers", str(profile.workers)]
    steps += [
        Step("common.status", ["-m", "common.status", "--checkpoint-dir", str(ck)], "status.log", show=True),
        Step("common.ensemble fit", ["-m", "common.ensemble", "fit", "--data", dfdc, "--dataset", "dfdc",
                                     *common, *workers], "ensemble_fit.log"),
        Step("common.evaluate", ["-m", "common.evaluate", "--dataset", "dfdc", "--data", dfdc, "--split", "test",
                                 "--parts", str(profile.held_out_part), *common, *workers], "evaluate.log"),
        Step("common.ensemble predict", ["-m", "common.ensemble", "predict", *map(str, predict_videos(
            data / "dfdc", profile.held_out_part)), "--checkpoint-dir", str(ck)], "predict.log", show=True),
    ]
    return steps


def predict_videos(dfdc_root: Path, part: int) -> list[Path]:
    """The first real and the first fake of the held-out part, from its metadata.json."""
    from common.data.synthetic import dfdc_part_dir

    folder = dfdc_part_dir(dfdc_root, part)
    meta_file = folder / "metadata.json"
    if not meta_file.is_file():
        return [folder / "real.mp4", folder / "fake.mp4"]  # not made yet: names for the plan only
    meta = json.loads(meta_file.read_text())
    real = min(n for n, e in meta.items() if e["label"] == "REAL")
    fake = min(n for n, e in meta.items() if e["label"] == "FAKE")
    return [folder / real, folder / fake]


# ----------------------------------------------------------------------------- running

Runner = Callable[[list[str], Path], int]


def child_env() -> dict[str, str]:
    """The user's environment, with one intra-op thread unless they chose otherwise: on a
    small shared CPU two spinning OpenMP threads stall each other and every other process
    (measured: one stage 75 s with two threads, 11 s with one, on a busy 2-core machine)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def subprocess_runner(argv: list[str], log: Path) -> int:
    """`python ARGV` from the repository root, stdout and stderr into `log`; its exit code."""
    with open(log, "w") as f:
        return subprocess.run([sys.executable, *argv], cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, env=child_env()).returncode


def last_words(log: Path) -> str:
    """The last line of a log that says something (an error line, usually)."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.is_file() else []
    errors = [ln for ln in lines if ln.startswith(("error:", "training failed:", "interrupted:"))]
    return (errors or lines or ["(no output)"])[-1]  # whole: a cut line loses what to do


def run_steps(steps: Sequence[Step], runner: Runner, logs: Path, echo=print) -> dict[str, float]:
    """Run each step; stop at the first that fails. -> seconds per step."""
    seconds = {}
    for i, step in enumerate(steps, 1):
        start = time.time()
        code = runner(step.argv, logs / step.log)
        seconds[step.name] = time.time() - start
        echo(f"[{i:2d}/{len(steps)}] {step.name:34s} exit {code}  {seconds[step.name]:6.1f} s")
        if step.show and (logs / step.log).is_file():
            echo("\n".join("      " + ln for ln in (logs / step.log).read_text(errors="replace").splitlines()
                           if not ln.startswith(("INFO", "WARNING"))))
        if code != 0:
            raise DemoFailed(f"{step.name} exited {code}: {last_words(logs / step.log)} "
                             f"(full log: {logs / step.log})")
    return seconds


# ----------------------------------------------------------------------------- results

def final_line(checkpoint_dir: Path, model: str, stage: str) -> dict | None:
    """The `final` record of a stage's metrics file, or None when the stage did not finish."""
    path = checkpoint_dir / f"{model}_{stage}.metrics.jsonl"
    if not path.is_file():
        return None
    final = None
    for text in path.read_text(errors="replace").splitlines():
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            continue
        final = line.get("final", final)
    return final


def collect(checkpoint_dir: Path, evaluation: Path) -> tuple[dict, dict]:
    """-> ({(model, stage): (the kept epoch's val video AUC, collapsed)}, {name: held-out video AUC}).
    The `final` line's validation figures are the kept epoch's (calibrated; the AUC does not
    change with the temperature), the same figure common.status shows."""
    val = {}
    for model in MODELS:
        for stage in STAGES:
            final = final_line(checkpoint_dir, model, stage)
            val[(model, stage)] = (math.nan, True) if final is None else (
                float(final["val"]["video"]["auc"]), bool(final["collapsed"]))
    held = {}
    if evaluation.is_file():
        rows = json.loads(evaluation.read_text())["rows"]
        held = {name: float(r["video"]["auc"]) for name, r in rows.items()}
    return val, held


def _cell(auc: float, collapsed: bool = False) -> str:
    text = "n/a" if auc is None or not math.isfinite(auc) else f"{auc:.3f}"
    return f"{text} COLLAPSED" if collapsed else text


def render(val: dict, held: dict, held_what: str) -> str:
    head = ["student", *(TITLES[s] for s in STAGES), f"held-out ({held_what})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model in MODELS:
        cells = [_cell(*val[(model, stage)]) for stage in STAGES]
        lines.append(f"| {model.upper()} | " + " | ".join(cells) + f" | {_cell(held.get(model, math.nan))} |")
    lines.append("| **ensemble** | " + " | ".join("" for _ in STAGES) + f" | **{_cell(held.get('ensemble', math.nan))}** |")
    return "\n".join(lines)


def missed_bars(val: dict, held: dict) -> list[str]:
    """What keeps this run from passing: collapsed students, the ensemble below ENSEMBLE_BAR."""
    problems = [f"{m.upper()} {s} collapsed (validation video AUC {_cell(a)})"
                for (m, s), (a, collapsed) in val.items() if collapsed]
    ens = held.get("ensemble", math.nan)
    if not (ens >= ENSEMBLE_BAR):
        problems.append(f"the ensemble's held-out video AUC is {_cell(ens)}, below the bar of {ENSEMBLE_BAR}")
    return problems


def timing_line(wall: float, data_s: float, seconds: dict[str, float]) -> str:
    """The wall time the way the README states it: the whole run, the data, the stage range,
    then the four commands after training."""
    stages = [t for name, t in seconds.items() if name.startswith("train_")]
    after = [seconds.get(name) for name in ("common.status", "common.ensemble fit", "common.evaluate",
                                             "common.ensemble predict")]
    parts = [f"data {data_s:.0f} s"]
    if stages:
        parts.append(f"stages {min(stages):.0f}–{max(stages):.0f} s each")
    if all(t is not None for t in after):
        parts.append("status / fit / evaluate / predict " + " / ".join(f"{t:.0f}" for t in after) + " s")
    return f"Wall time {wall / 60:.1f} min ({wall:.0f} s: {', '.join(parts)})."


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- command

class DemoRefused(Exception):
    """A check before any work failed: one line, and the exit code (2 user, 3 resource)."""

    def __init__(self, code: int, line: str):
        super().__init__(line)
        self.code = code


def check_out(out: Path, overwrite: bool) -> None:
    """OUT must be new, empty, or (with --overwrite) a previous demo's folder."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DemoRefused(2, f"{out} is a file; name a new folder: python -m common.demo NEW_FOLDER")
    if not any(out.iterdir()):
        return
    if not (out / MARKER).is_file():
        raise DemoRefused(2, f"{out} is not empty and was not made by the demo; name a new or empty "
                             f"folder: python -m common.demo NEW_FOLDER")
    if not overwrite:
        raise DemoRefused(2, f"{out} holds an earlier demo run; to run again, replace it: python -m "
                             f"common.demo {out} --overwrite (or name a new folder)")


def check_model() -> None:
    """The stages' face detector has its model (the per-user cache, else the one-time download
    each stage would make): a missing model fails here, not after the data and stage 1."""
    if DEFAULTS.face_detector != "yunet":
        return
    from common.errors import UserError
    from common.faces.detectors import MODEL_DIR_ENV, YUNET_FILE, YUNET_URL, model_cache_dir, resolve_yunet_model

    try:
        resolve_yunet_model()
    except UserError as exc:
        why = str(exc) if "sha256" in str(exc) else "not in the model cache, and the download failed"
        raise DemoRefused(2, f"the stages detect faces with YuNet, and its model is missing ({why}): put "
                             f"{YUNET_FILE} (from {YUNET_URL}) into {model_cache_dir()}, or set {MODEL_DIR_ENV} "
                             f"to a folder holding it, then run the demo again")


def check_disk(out: Path, replacing: bool) -> None:
    """NEEDS_FREE_BYTES free where OUT is (or will be), counting an earlier run it replaces."""
    where = out.absolute()
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    if replacing:
        free += sum(f.stat().st_size for f in out.rglob("*") if f.is_file() and not f.is_symlink())
    if free < NEEDS_FREE_BYTES:
        raise DemoRefused(3, f"only {free / 1024 ** 3:.1f} GB free at {where}; the demo writes about 1 GB and "
                             f"needs {NEEDS_FREE_BYTES / 1024 ** 3:.0f} GB free: free some space or name a "
                             f"folder on another disk")


def prepare_out(out: Path, overwrite: bool) -> None:
    """Every check, then the folder: emptied when it is an earlier demo's, marked as the demo's."""
    check_out(out, overwrite)
    check_model()
    replacing = overwrite and (out / MARKER).is_file()
    check_disk(out, replacing)
    if replacing:
        shutil.rmtree(out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by python -m common.demo; --overwrite replaces this folder\n")


def run_demo(out: Path, profile: Profile, runner: Runner = subprocess_runner, echo=print) -> int:
    """The demo into a fresh `out`; 0 when every step ran and every bar is met, else 1."""
    from common.data.synthetic import make_all

    start = time.time()
    logs = out / "logs"
    echo(f"demo: sample data ({profile.sample_size}) -> {out / 'data'}; steps run with "
         f"OMP_NUM_THREADS={child_env()['OMP_NUM_THREADS']}, logs in {logs}")
    trees = make_all(out / "data", size=profile.sample_size)
    data_s = time.time() - start
    echo("      " + ", ".join(f"{name} {len(paths)} videos" for name, paths in trees.items()) + f"  {data_s:.1f} s")
    seconds = {}
    try:
        seconds = run_steps(plan(out, profile), runner, logs, echo)
    finally:
        val, held = collect(out / "checkpoints", out / "checkpoints" / "evaluation" / "dfdc" / "evaluation.json")
    table = render(val, held, f"DFDC part {profile.held_out_part}")
    timing = timing_line(time.time() - start, data_s, seconds)
    problems = missed_bars(val, held)
    verdict = "all bars met" if not problems else "; ".join(problems)
    write_text(out / "demo.md", f"# Demo results\n\n{table}\n\n{timing}\n\n{verdict}.\n")
    echo(f"\n{table}\n\n{timing}\n(table and timing also in {out / 'demo.md'})")
    if problems:
        raise DemoFailed(verdict)
    echo(f"every student learned (validation AUC > collapse line), ensemble held-out video AUC "
         f"{held['ensemble']:.3f} >= {ENSEMBLE_BAR}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m common.demo", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="The whole job on generated data, run the way a user runs it: sample data, the "
                    "fifteen stage scripts, status, ensemble fit, held-out evaluation, predict, one table.")
    p.add_argument("out", nargs="?", type=Path, default=Path("demo-run"),
                   help="new or empty folder for data, cache, checkpoints, logs and the table")
    p.add_argument("--profile", choices=tuple(PROFILES), default="demo",
                   help="demo: learns (its time is in the README); tiny: the plumbing only, on the test tree")
    p.add_argument("--overwrite", action="store_true", help="replace OUT when it holds an earlier demo run")
    return p


def main(argv: list[str] | None = None, runner: Runner = subprocess_runner) -> int:
    args = build_parser().parse_args(argv)
    try:
        prepare_out(args.out, args.overwrite)
    except DemoRefused as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except OSError as e:
        print(f"error: {args.out}: {e.strerror or e}", file=sys.stderr)
        return 3 if e.errno in (errno.ENOSPC, errno.EDQUOT) else 2
    try:
        return run_demo(args.out, PROFILES[args.profile], runner)
    except DemoFailed as e:
        print(f"demo failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the running step got the Ctrl-C too and stopped on its own
        print(f"demo interrupted; its files so far are in {args.out}; to run it again: "
              f"python -m common.demo {args.out} --overwrite", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
