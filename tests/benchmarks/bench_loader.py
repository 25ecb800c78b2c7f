"""Loader against model: samples/s one DataLoader worker delivers from the face cache, and
the on-device augmentation's cost, against the model's train step on the same machine.

    python -m tests.benchmarks.bench_loader [--rounds 2] [--backbone efficientnet_b4]

Side by side, order rotating per round: one worker (as common.training.stage_data builds it: read
the cached frames, check and decode them (common/faces/codec.py), collate; the stage's CLAHE /
bilateral filter are in the cache already) for a single frame of the native view (CM's
lossless WebP: the dearest single-frame decode; BG's JPEG and RR's H.264 centre frame cost
less) and a clip of the face view with its log-mel window (TM's H.264 run plus what AV reads
beside it); the stage's ClipAugmenter on a batch (common.training.augment: it runs on the
training device, here the CPU); and one optimiser step of the student (BG for single frames,
TM for clips) on a batch of the same size. From the worker rates it sizes the loader of an
8-GPU box for the assumed per-GPU rate (--gpu-images-per-s; NOT measured here: see
GPU_ASSUMPTION).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks import _shared as S  # noqa: E402

# NVIDIA DeepLearningExamples, PyTorch EfficientNet README, "Training performance: NVIDIA
# DGX A100 (8x A100 80GB)": efficientnet-b4, 1 GPU, mixed precision: 331 img/s at its
# default 380 px. Scaled by pixel count to 224 px: 331 x (380/224)^2 = 953 img/s per GPU.
# An assumption for sizing (small images use a GPU less well; an H100 is faster), not a
# measurement made here.
GPU_IMAGES_PER_S = 331 * (380 / 224) ** 2
GPU_ASSUMPTION = ("efficientnet_b4 train step, 1x A100 80GB, AMP: 331 img/s at 380 px "
                  "(NVIDIA DeepLearningExamples PyTorch EfficientNet README, training "
                  "performance table), scaled by pixel count to 224 px = 953 img/s; the TM "
                  "student's rate is that times the TM/BG step-rate ratio measured here")
TARGET_GPUS, TARGET_WORKERS = 8, 16


def worker_rate(dataset, batch_size: int, batches: int, seed: int) -> float:
    """Samples/s (wall) of ONE DataLoader worker in steady state: the clock starts when the
    first batch arrives (the worker is started and busy) and stops at the last."""
    from torch.utils.data import DataLoader

    from common.data.samples import EpochSampler, collate_samples

    sampler = EpochSampler(dataset.labels, seed=seed, shuffle=True)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=1,
                        prefetch_factor=2, collate_fn=collate_samples)
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        n += len(next(it)["label"])
    dt = time.perf_counter() - t0
    del it
    return n / dt


def core_rate(dataset, n: int, seed: int, batch_size: int) -> float:
    """Samples per CPU-second of what a worker does (items with their seeds, then collate),
    here in this process with one torch and one OpenCV thread, as in a worker. CPU time
    is what a core of its own would need: on a shared machine wall time also counts the
    other users."""
    import cv2
    import torch

    from common.data.samples import EpochSampler, collate_samples

    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        keys = list(EpochSampler(dataset.labels, seed=seed, shuffle=True))[:n]
        c0 = time.process_time()
        for b in range(0, len(keys), batch_size):  # as a worker asks: a batch's items together
            collate_samples(dataset.__getitems__(keys[b:b + batch_size]))
        return len(keys) / max(1e-9, time.process_time() - c0)
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)


def model_step(model, opt, batch: dict) -> None:
    import torch

    logits = model(batch["frames"])
    loss = torch.nn.functional.cross_entropy(logits, batch["label"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def run(args) -> dict:
    import torch

    from common.training.augment import ClipAugmenter
    from common.faces.cache import FaceCache
    from common.model import build_student
    from common.preprocess import ClipTransform
    from common.recipes import RECIPES
    from common.data.samples import FaceSamples

    torch.manual_seed(0)
    # One thread per core's worth of work on both sides; on a shared machine more threads
    # also spin-wait on cores other people are using.
    torch.set_num_threads(args.model_threads)
    cache = FaceCache(args.cache_dir, "bench_loader", args.image_size, args.points, args.clip_len,
                      "haar")
    records = S.write_fake_cache(cache, args.videos, audio=True)
    stages = [RECIPES[s] for s in (args.stages or list(RECIPES))]
    kinds = {"frame": 1, "clip": args.clip_len}
    reads = {"frame": ("native", False), "clip": ("face", True)}  # (view, with its log-mel)
    batch_of = {"frame": args.model_batch, "clip": args.model_clip_batch}

    fns = {}
    for kind, clip in kinds.items():
        # As common.training.stage_data.samples_for: the same worker for every stage.
        ds = FaceSamples(records, cache, clip_len=clip,
                         transform=ClipTransform(args.image_size, preprocessing="none", normalize=False),
                         view=reads[kind][0], with_audio=reads[kind][1])
        fns[f"worker/{kind}"] = lambda ds=ds: worker_rate(ds, args.batch_size, args.batches, 0)
        fns[f"core/{kind}"] = lambda ds=ds: core_rate(ds, args.batch_size * args.batches, 1, args.batch_size)
        frames = torch.randint(0, 256, (batch_of[kind], clip, 3, args.image_size, args.image_size),
                               dtype=torch.uint8)
        seeds = torch.arange(batch_of[kind], dtype=torch.int64)
        for stage in stages:
            aug = ClipAugmenter(stage.augmentation)
            fns[f"augment/{stage.stage}/{kind}"] = lambda a=aug, f=frames, s=seeds: a(f, s)

    for kind, name in (("frame", "bg"), ("clip", "tm")):
        model = build_student(name, backbone=args.backbone, pretrained="none", clip_len=args.clip_len)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        data = {"frames": torch.randn(batch_of[kind], kinds[kind], 3, args.image_size, args.image_size),
                "label": torch.arange(batch_of[kind]) % 2}
        model_step(model, opt, data)  # warm-up: first-step allocations
        fns[f"model/{kind}"] = (lambda m=model, o=opt, d=data: model_step(m, o, d))

    res = S.interleaved(fns, args.rounds)
    model_rate = {k: S.median([batch_of[k] / w for w in res[f"model/{k}"]["wall"]]) for k in kinds}
    gpu = {"frame": args.gpu_images_per_s,
           "clip": args.gpu_images_per_s * model_rate["clip"] / model_rate["frame"]}
    per_config = {}
    for stage in stages:
        for kind, clip in kinds.items():
            wall = S.median(res[f"worker/{kind}"]["result"])
            core = S.median(res[f"core/{kind}"]["result"])
            need = TARGET_GPUS * gpu[kind]  # samples/s that 8 GPUs consume
            per_config[f"{stage.stage}/{kind}"] = {
                "worker_samples_per_s": wall,
                "core_samples_per_cpu_s": core,
                "core_frames_per_cpu_s": core * clip,
                "worker_vs_model_here": wall / model_rate[kind],
                "workers_for_8_gpus": math.ceil(need / core),
                "workers_for_8_gpus_by_wall_rate": math.ceil(need / wall),
                "augment_fraction_of_step": S.paired_ratio(res[f"augment/{stage.stage}/{kind}"]["cpu"],
                                                           res[f"model/{kind}"]["cpu"]),
            }
    stage4 = [k for k in per_config if k.startswith("stage4")]
    return S.rounded({
        "benchmark": "loader",
        "figures": {
            "per_config": per_config,
            "model_train_samples_per_s_here": {"bg (frame)": model_rate["frame"],
                                               "tm (clip)": model_rate["clip"]},
            "assumed_gpu_samples_per_s": {"bg (frame)": gpu["frame"], "tm (clip)": gpu["clip"]},
        },
        "targets": {"stage4_workers_for_8_gpus_max": TARGET_WORKERS},
        "pass": {k: per_config[k]["workers_for_8_gpus"] <= TARGET_WORKERS for k in stage4},
        "conditions": S.conditions(
            backbone=args.backbone, image_size=args.image_size, clip_len=args.clip_len,
            loader_batch_size=args.batch_size, batches_timed=args.batches, rounds=args.rounds,
            model_batch=batch_of,
            cache_entries=f"{args.videos} synthetic videos, [{args.points}, {args.clip_len}, "
                          f"{args.image_size}, {args.image_size}, 3] crops each, in the cache's "
                          "codecs (frame: the native view, lossless WebP; clip: the face view, "
                          "H.264 runs, with a 10 s log-mel)",
            gpu_assumption=GPU_ASSUMPTION, gpu_images_per_s=args.gpu_images_per_s,
            model_step=f"AdamW, cross-entropy, fp32 on the CPU ({args.model_threads} torch "
                       "thread(s)), random input, after one warm-up",
            notes="worker_*: one DataLoader worker, wall clock; core_*: the worker's work in "
                  "this process, per CPU-second (one torch / OpenCV thread); workers_for_8_gpus "
                  "= ceil(8 x assumed GPU samples/s / core rate); augment_fraction_of_step: "
                  "CPU seconds of the stage's ClipAugmenter on the model's batch / CPU seconds "
                  "of one train step on that batch, median of per-round ratios, both on the CPU "
                  "here (on a GPU both run there: python -m tests.benchmarks.bench_gpu)"),
    })


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_loader",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache-dir", default=S.DEFAULT_CACHE_DIR)
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--points", type=int, default=8, help="sample points per cached video")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--clip-len", type=int, default=8)
    ap.add_argument("--stages", nargs="*", default=None,
                    help="recipes to measure (default: all three)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--batches", type=int, default=2, help="batches timed per measurement")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--backbone", default="efficientnet_b4")
    ap.add_argument("--model-batch", type=int, default=2)
    ap.add_argument("--model-clip-batch", type=int, default=2)
    ap.add_argument("--model-threads", type=int, default=1, help="torch threads of the model step")
    ap.add_argument("--gpu-images-per-s", type=float, default=GPU_IMAGES_PER_S,
                    help="ASSUMED train images/s of one GPU for the backbone at this size")
    return ap


def main(argv: list[str] | None = None) -> dict:
    return S.emit(run(parser().parse_args(argv)))


if __name__ == "__main__":
    main()
