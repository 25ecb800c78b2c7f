"""Memory: peak RSS of face extraction and of one training epoch at two dataset sizes.

    python -m tests.benchmarks.bench_memory [--train-sizes 50 500] [--extract-sizes 5 20]

Each measurement runs in a fresh child process (peak RSS = its ru_maxrss), so the sizes do
not share a high-water mark. Training: synthetic face-cache entries (the layout
common.faces.cache writes) read by FaceSamples + DataLoader, stage-4 transform, one epoch of
common.training.engine.train_one_epoch. Extraction: build_face_cache over small generated videos.
Target: the larger size's peak within 10% of the smaller's; the growth is also set against
the size of the sample index, which has to grow with the dataset.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks import _shared as S  # noqa: E402

TARGET_GROWTH = 0.10
DFDC_VIDEOS = 120_000


# ----------------------------------------------------------------------------- children

def child_train(args, n: int) -> dict:
    import tracemalloc

    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from common.training.augment import augmenter_for
    from common.training.engine import make_optimizer, make_precision, train_one_epoch
    from common.faces.cache import FaceCache
    from common.losses import build_loss
    from common.model import build_student
    from common.preprocess import ClipTransform
    from common.recipes import RECIPES
    from common.data.samples import EpochSampler, FaceSamples

    torch.manual_seed(0)
    torch.set_num_threads(1)
    recipe = RECIPES["stage4_dfdc"]
    cache = FaceCache(args.cache_dir, "bench_memory", args.image_size, args.points, args.clip_len,
                      "haar")
    records = S.write_fake_cache(cache, n)  # already written by the parent: only listed here
    model = build_student("bg", backbone=args.backbone, pretrained="none", clip_len=args.clip_len)
    tracemalloc.start()  # the index: what FaceSamples keeps in Python objects
    ds = FaceSamples(records, cache, clip_len=1,  # as stage_data: preprocessing done at extraction
                     transform=ClipTransform(args.image_size, preprocessing="none", normalize=False))
    index_mb = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()
    sampler = EpochSampler(ds.labels, seed=0)
    loader = DataLoader(ds, batch_size=args.batch_size, sampler=sampler, num_workers=0)
    opt, sched = make_optimizer(model, recipe.lr, recipe.weight_decay, len(loader), recipe.warmup_fraction,
                                recipe.lr_floor)
    loss_fn = build_loss("weighted_ce", class_counts=np.bincount(ds.labels, minlength=2).tolist())
    stats = train_one_epoch(model, loader, loss_fn, opt, sched,
                            make_precision(torch.device("cpu"), amp=False),
                            augment=augmenter_for(recipe.augmentation))
    return {"videos": n, "samples": stats["samples"], "steps": stats["steps"],
            "index_mb": index_mb, "peak_rss_mb": S.peak_rss_mb()}


def child_extract(args, n: int) -> dict:
    from common.data.datasets import VideoRecord
    from common.faces.extraction import build_face_cache
    from common.faces.cache import FaceCache

    videos = [S.ensure_video(args.video_dir, i, args.width, args.height, args.seconds, args.fps,
                             args.face_px) for i in range(n)]
    records = [VideoRecord(path=str(p), rel=f"bench/{p.name}", label=0, group=p.stem,
                           split="train", has_audio=False) for p in videos]
    with tempfile.TemporaryDirectory(prefix="bench_mem_extract_") as tmp:
        cache = FaceCache(tmp, "bench_memory", args.extract_image_size, args.extract_points,
                          args.clip_len, "haar")
        summary = build_face_cache(records, cache, workers=0, decode_audio=False, progress=False)
    return {"videos": n, "done": summary["done"], "peak_rss_mb": S.peak_rss_mb()}


def measure(kind: str, n: int, argv: list[str]) -> dict:
    """Run one measurement in a fresh Python process; its last stdout line is the JSON."""
    cmd = [sys.executable, "-m", "tests.benchmarks.bench_memory", *argv, "--child", kind, str(n)]
    out = subprocess.run(cmd, cwd=S.REPO, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} child for {n} videos failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- parent

def run(args, argv: list[str]) -> dict:
    from common.faces.cache import FaceCache

    cache = FaceCache(args.cache_dir, "bench_memory", args.image_size, args.points, args.clip_len,
                      "haar")
    S.write_fake_cache(cache, max(args.train_sizes))  # inputs made once, outside the children
    for i in range(max(args.extract_sizes)):
        S.ensure_video(args.video_dir, i, args.width, args.height, args.seconds, args.fps,
                       args.face_px)

    results: dict = {"train": [], "extract": []}
    for kind, sizes in (("train", args.train_sizes), ("extract", args.extract_sizes)):
        if args.skip_extract and kind == "extract":
            continue
        for n in sizes:
            results[kind].append(measure(kind, n, argv))

    figures, passed = {}, {}
    for kind, rows in results.items():
        if len(rows) < 2:
            continue
        small, large = rows[0], rows[-1]
        ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
        figures[f"{kind}_peak_ratio"] = ratio
        figures[f"{kind}_peak_growth_mb"] = large["peak_rss_mb"] - small["peak_rss_mb"]
        passed[f"{kind}_peak_ratio"] = ratio <= 1.0 + TARGET_GROWTH
        if kind == "train":
            per_video_mb = (large["index_mb"] - small["index_mb"]) / max(1, large["videos"] - small["videos"])
            figures["train_index_mb_per_1000_videos"] = per_video_mb * 1000
            figures["train_index_mb_for_120k_videos_estimate"] = per_video_mb * DFDC_VIDEOS * \
                args.frames_per_video_full / args.points
            figures["train_growth_beyond_index_mb"] = (figures["train_peak_growth_mb"]
                                                        - (large["index_mb"] - small["index_mb"]))
    return S.rounded({
        "benchmark": "memory",
        "figures": figures,
        "targets": {"peak_ratio_max": 1.0 + TARGET_GROWTH},
        "pass": passed,
        "runs": results,
        "conditions": S.conditions(
            train=f"bg, {args.backbone}, stage-4 transform, batch {args.batch_size}, one epoch, "
                  f"DataLoader num_workers=0, cache entries [{args.points}, {args.clip_len}, "
                  f"{args.image_size}, {args.image_size}, 3]",
            extract=f"build_face_cache workers=0, {args.width}x{args.height} {args.seconds:g} s "
                    f"{args.fps:g} fps videos, N={args.extract_points}, T={args.clip_len}, "
                    f"S={args.extract_image_size}",
            measure="ru_maxrss of a fresh child process per size",
            index_estimate=f"index growth per video scaled to {DFDC_VIDEOS} videos x "
                           f"{args.frames_per_video_full} sample points"),
    })


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_memory",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache-dir", default=S.DEFAULT_CACHE_DIR)
    ap.add_argument("--video-dir", default=S.DEFAULT_VIDEO_DIR)
    ap.add_argument("--train-sizes", type=int, nargs=2, default=[50, 500])
    ap.add_argument("--extract-sizes", type=int, nargs=2, default=[5, 20])
    ap.add_argument("--skip-extract", action="store_true")
    ap.add_argument("--points", type=int, default=4, help="sample points per cached video")
    ap.add_argument("--frames-per-video-full", type=int, default=32,
                    help="sample points of a real cache, for the index estimate")
    ap.add_argument("--clip-len", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--backbone", default="mobilenet_v3_small")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--face-px", type=int, default=120)
    ap.add_argument("--extract-points", type=int, default=8)
    ap.add_argument("--extract-image-size", type=int, default=112)
    ap.add_argument("--child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if args.child:
        kind, n = args.child[0], int(args.child[1])
        out = child_train(args, n) if kind == "train" else child_extract(args, n)
        print(json.dumps(out))
        return out
    return S.emit(run(args, argv))


if __name__ == "__main__":
    main()
