"""Every command's flags: the fifteen stage scripts' (the same everywhere), `common.evaluate`'s and
`common.ensemble`'s. Nothing heavy is imported here, so --help answers at once."""
from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError
from common.recipes import DEFAULTS, RECIPES, script_name

# Exit codes (README, "When things go wrong").
EXIT_USER_ERROR = 2       # a bad path, flag or file: fix the command line
EXIT_TRAINING_FAILED = 3  # non-finite loss, too many bad videos, a failed write
EXIT_INTERRUPTED = 130    # SIGINT/SIGTERM: state was saved, rerun with --resume


@dataclass
class StageConfig:
    """One stage run's settings: exactly the parsed flags (defaults live in the parser)."""
    model: str
    stage: str
    data: Path
    checkpoint_dir: Path
    cache_dir: Path
    init: Path | None
    resume: bool
    overwrite: bool
    epochs: int
    lr: float
    batch_size: int
    workers: int
    seed: int
    backbone: str
    pretrained: str
    image_size: int
    frames_per_video: int
    clip_len: int
    max_videos: int | None
    device: str
    amp: bool
    face_detector: str
    face_model: Path | None
    max_bad_fraction: float
    status_file: Path | None
    compression: str = "c23"                  # FF++ stages only
    splits: Path | None = None                # FF++ stages only
    chunks: tuple[int, ...] | None = None     # DFDC stage only
    skip_missing_chunks: bool = False         # DFDC stage only
    val_parts: tuple[int, ...] | None = None  # DFDC stage only: whole parts held out for validation


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction between 0 and 1, got {text}")
    return value


def chunk_list(text: str) -> tuple[int, ...]:
    try:
        chunks = tuple(int(c) for c in text.split(",") if c.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated part numbers like 9,8,3, got {text!r}")
    if not chunks or any(c < 0 or c > 49 for c in chunks):
        raise argparse.ArgumentTypeError(f"DFDC parts are numbered 0-49, got {text!r}")
    repeated = sorted({c for c in chunks if chunks.count(c) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"each part may be listed once; repeated: "
                                         f"{','.join(map(str, repeated))}")
    return chunks


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every flag shows its default; the epilog keeps its line breaks."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False) or "default" in text or action.nargs == 0:
            return text
        return text + " (default: %(default)s)"


def build_parser(model: str, stage: str) -> argparse.ArgumentParser:
    """The flags of one stage script. Only recipes and errors are imported here, so --help
    never pays for importing torch."""
    recipe = RECIPES[stage]
    script = script_name(model, stage)
    first = "/data/ff++" if recipe.dataset == "faceforensics" else f"/data/{recipe.dataset}"
    p = argparse.ArgumentParser(
        prog=f"python {script}", formatter_class=_HelpFormatter,
        description=f"Train the {model.upper()} student, {stage} ({recipe.title}): lr {recipe.lr}, "
                    f"{recipe.epochs} epochs{' per chunk' if recipe.chunks else ''}, loss {recipe.loss}, "
                    f"augmentation {recipe.augmentation}, preprocessing {recipe.preprocessing}.",
        epilog=f"usual invocations:\n  python {script} --data {first}\n"
               f"  python {script} --data {first} --resume     # after an interruption")
    a = p.add_argument
    a("--data", type=Path, required=True, help=f"root of the official {recipe.title} download")
    a("--checkpoint-dir", type=Path, default=Path("checkpoints"), help="where checkpoints and metrics go")
    a("--cache-dir", type=Path, default=Path("cache"), help="face cache shared by all five models")
    a("--init", type=Path, help="start from this checkpoint instead of the previous stage's "
      f"({'ImageNet backbone' if recipe.previous is None else f'{model}_{recipe.previous}.pt'} by default)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from this stage's _last.pt where it stopped")
    again.add_argument("--overwrite", action="store_true",
                       help="train this stage again over its existing checkpoints")
    a("--epochs", type=positive_int, default=recipe.epochs,
      help=f"epochs{' per chunk' if recipe.chunks else ''} (default: %(default)s, the recipe's)")
    a("--lr", type=positive_float, default=recipe.lr, help="peak learning rate (default: %(default)s, the recipe's)")
    a("--batch-size", type=positive_int, default=DEFAULTS.batch_size, help="samples per GPU per step")
    a("--workers", type=non_negative_int, default=DEFAULTS.workers,
      help="DataLoader worker processes per GPU (0 = in-process)")
    a("--seed", type=non_negative_int, default=DEFAULTS.seed, help="seed for splits, sampling, augmentation and init")
    a("--backbone", default=DEFAULTS.backbone, help="torchvision backbone (stage 1; later stages inherit)")
    a("--pretrained", default="imagenet", help="backbone weights: imagenet, none, or a path to a state_dict")
    a("--image-size", type=positive_int, default=DEFAULTS.image_size, help="face crop side in pixels")
    a("--frames-per-video", type=positive_int, default=DEFAULTS.frames_per_video,
      help="frames sampled evenly over each video")
    a("--clip-len", type=positive_int, default=DEFAULTS.clip_len, help="consecutive frames per TM/AV clip")
    a("--max-videos", type=positive_int, help="cap videos per split (smoke runs; default: all)")
    a("--device", choices=("auto", "cuda", "cpu"), default="auto", help="auto = CUDA when present")
    a("--no-amp", dest="amp", action="store_false", help="disable mixed precision on CUDA")
    a("--face-detector", choices=("yunet", "haar", "none"), default=DEFAULTS.face_detector,
      help="yunet (model from --face-model or the per-user cache), haar, or none (videos are "
           "face crops already)")
    a("--face-model", type=Path, help="YuNet .onnx model for --face-detector yunet")
    a("--max-bad-fraction", type=fraction, default=0.05, help="stop if more than this share of a split is unreadable")
    a("--status-file", type=Path, default=Path("TRAINING_STATUS.md"), help="progress table to refresh")
    a("--no-status", action="store_true", help="do not touch the status file")
    if recipe.dataset == "faceforensics":
        a("--compression", choices=("raw", "c23", "c40"), default="c23", help="FF++ compression folder")
        a("--splits", type=Path, help="folder with the official train/val/test.json (default: <data>/splits)")
    if recipe.chunks:
        a("--chunks", type=chunk_list, default=recipe.chunks,
          help="DFDC parts in training order (default: %s)" % ",".join(map(str, recipe.chunks)))
        a("--skip-missing-chunks", action="store_true", help="warn and skip absent parts instead of stopping")
        a("--val-parts", type=chunk_list, help="DFDC parts validated on, whole, never trained on (default: the "
          "first present part outside --chunks; with none, a split grouped by original video, where actors "
          "may cross)")
    return p


def parse_config(model: str, stage: str, argv: list[str] | None = None) -> StageConfig:
    """StageConfig from the command line: every parsed flag is a field of the same name."""
    args = vars(build_parser(model, stage).parse_args(argv))
    if args.pop("no_status"):
        args["status_file"] = None
    return StageConfig(model=model, stage=stage, **args)


def run_stage(model: str, stage: str, argv: list[str] | None = None) -> int:
    """Entry point of every stage script: parse flags, train, map failures to exit codes."""
    config = parse_config(model, stage, argv)  # before torch is imported: --help is instant
    from common.training.stage import train_stage
    from common.training.stage_end import TrainingFailed
    from common.training.stop_flag import StageInterrupted

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    try:
        train_stage(config)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except TrainingFailed as e:
        print(f"training failed: {e}", file=sys.stderr)
        return EXIT_TRAINING_FAILED
    except StageInterrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training began
        print("interrupted: stopped at once; rerun the same command with --resume to continue "
              "from the last checkpoint", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


# ----------------------------------------------------------------------------- the other commands
# Their modules import torch and the models; their flags live here so that `--help` and a bad
# flag answer before any of that loads (common/evaluate.py and common/ensemble/__main__.py parse
# first). The detector and dataset names are imported when a parser is built, not with this module.

def _cache_and_face_flags(p: argparse.ArgumentParser, cap: str) -> None:
    """The face cache, a cap on the videos, and the face settings, which default to the ones the
    students were trained with (evaluate and ensemble fit)."""
    from common.faces.detectors import DETECTORS

    p.add_argument("--cache-dir", type=Path, default=Path("cache"))
    p.add_argument("--max-videos", type=positive_int, help=cap)
    p.add_argument("--image-size", type=positive_int, help=f"face crop side (default: training config or {DEFAULTS.image_size})")
    p.add_argument("--frames-per-video", type=positive_int, help=f"default: training config or {DEFAULTS.frames_per_video}")
    p.add_argument("--face-detector", choices=DETECTORS, help=f"default: training config or {DEFAULTS.face_detector}")
    p.add_argument("--face-model", help="YuNet .onnx for --face-detector yunet")


def evaluate_parser() -> argparse.ArgumentParser:
    """The flags of `python -m common.evaluate`."""
    from common.data.datasets import DATASETS

    p = argparse.ArgumentParser(prog="python -m common.evaluate",
                                description="Score every student and the ensemble on held-out data.")
    p.add_argument("--checkpoint-dir", type=Path, default=Path("checkpoints"))
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument("--data", type=Path, required=True, help="dataset root (official layout)")
    p.add_argument("--split", choices=("test",), default="test",
                   help="held-out data only: FF++ official test, Celeb-DF test list, untrained DFDC parts")
    p.add_argument("--parts", type=chunk_list, help="DFDC parts to score (default: every part no student trained on)")
    p.add_argument("--compression", choices=("raw", "c23", "c40"), default="c23", help="FF++ compression folder")
    p.add_argument("--splits", type=Path, help="FF++ folder with the official split files (default <data>/splits)")
    p.add_argument("--allow-overlap", action="store_true",
                   help="leave out test videos a student's stage trained or validated on (default: refuse them)")
    _cache_and_face_flags(p, "cap the videos scored (half real, half fake)")
    p.add_argument("--seed", type=int, help=f"seed of the --max-videos cap (default: training config or {DEFAULTS.seed})")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, help="output folder (default <checkpoint-dir>/evaluation/<dataset>)")
    return p


def ensemble_parser() -> argparse.ArgumentParser:
    """The flags of `python -m common.ensemble fit | predict`."""
    p = argparse.ArgumentParser(prog="python -m common.ensemble",
                                description="Fit and apply the stacking ensemble of the students.")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="fit the combiners on the validation videos the students' checkpoints list")
    f.add_argument("--checkpoint-dir", type=Path, default=Path("checkpoints"))
    f.add_argument("--data", type=Path, required=True, help="dataset root (official layout)")
    f.add_argument("--dataset", choices=("dfdc", "celebdf", "faceforensics"),
                   help="check that the students were validated on this dataset")
    _cache_and_face_flags(f, "cap the listed validation videos, and the fresh ones apart (half real, half fake each)")
    f.add_argument("--seed", type=int, help=f"seed of the --max-videos cap (default: training config or {DEFAULTS.seed}); "
                                            "the videos themselves come from the students' checkpoints")
    f.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    f.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size)
    f.add_argument("--workers", type=int, default=2, help="DataLoader and face-extraction workers")
    f.add_argument("--out", type=Path, help="where ensemble.json and the reports go "
                                            "(default: --checkpoint-dir)")
    q = sub.add_parser("predict", help="score video files with a fitted ensemble")
    q.add_argument("videos", nargs="+", metavar="VIDEO")
    q.add_argument("--checkpoint-dir", type=Path, help="students' folder (default: the ensemble "
                                                        "file's folder, else checkpoints)")
    q.add_argument("--ensemble", type=Path, help="default: <checkpoint-dir>/ensemble.json")
    q.add_argument("--json", action="store_true",
                   help="JSON Lines: one JSON object per video, one per line, instead of the text lines; "
                        "each student has \"used\" and, when false, a \"reason\"")
    q.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return p
