"""GPU training throughput: AMP + channels_last against fp32, peak memory, multi-GPU scaling.

    python -m tests.benchmarks.bench_gpu [--out bench_gpu.json]

One call on a CUDA machine. A slice of a stage-1 epoch (the BG student, efficientnet_b4 at
224, the stage-1 recipe: AdamW + warmup-cosine, cross-entropy, "minimal" augmentation on the
device) runs through common.training.engine.train_one_epoch exactly as training does, in two modes on
the same card, alternating, several rounds:
  - amp:  channels_last weights, autocast (bf16 where supported, else fp16 + grad scaler);
  - fp32: default memory format, no autocast (what --no-amp trains with).
Reported: images/s of each, their ratio (target >= 2x), peak GPU memory of each, the on-device
augmentation's share of an AMP step, and, with more than one visible GPU, the AMP mode under
torchrun on all of them against one: total images/s and scaling efficiency
(N-GPU rate / (N x one-GPU rate), the same per-GPU batch).

The batches are real loader output (a synthetic face cache read through FaceSamples,
EpochSampler and a DataLoader, uint8 with their augmentation seeds), read once and kept in
pinned host memory: each step still copies its batch to the GPU, augments it there and
trains, but no DataLoader workers compete for the CPU (their rate: bench_loader).

Without a CUDA device it prints "no CUDA device" and exits 0. `--cpu-smoke` runs the same
code on the CPU at toy sizes (gloo instead of NCCL), for the test suite only: its figures
mean nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks import _shared as S  # noqa: E402

STAGE = "stage1_faceforensics"
TARGET_AMP_SPEEDUP = 2.0


# ----------------------------------------------------------------------------- inputs

def loader_batches(args) -> list[dict]:
    """`args.distinct_batches` collated training batches as the DataLoader delivers them."""
    import torch
    from torch.utils.data import DataLoader

    from common.faces.cache import FaceCache
    from common.preprocess import ClipTransform
    from common.data.samples import EpochSampler, FaceSamples, collate_samples

    cache = FaceCache(args.cache_dir, "bench_gpu", args.image_size, args.points, 1, "haar")
    records = S.write_fake_cache(cache, args.videos)
    ds = FaceSamples(records, cache, clip_len=1,
                     transform=ClipTransform(args.image_size, preprocessing="none", normalize=False))
    sampler = EpochSampler(ds.labels, seed=0, balanced=True)  # stage 1: class-balanced
    loader = DataLoader(ds, batch_size=args.batch_size, sampler=sampler, num_workers=0, drop_last=True,
                        collate_fn=collate_samples)
    out = []
    while len(out) < args.distinct_batches:
        for batch in loader:
            out.append({k: v.pin_memory() if isinstance(v, torch.Tensor) and torch.cuda.is_available()
                        else v for k, v in batch.items()})
            if len(out) == args.distinct_batches:
                break
        sampler.set_epoch(sampler.epoch + 1)
    return out


def steps_of(batches: list[dict], n: int) -> list[dict]:
    return [batches[i % len(batches)] for i in range(n)]


# ----------------------------------------------------------------------------- one mode

class Trainer:
    """One student, optimiser and precision mode, trained slice by slice as stage 1 does."""

    def __init__(self, args, device, amp: bool, ddp_info=None) -> None:
        import torch
        from torch.nn.parallel import DistributedDataParallel

        from common.training.augment import augmenter_for
        from common.training.engine import make_optimizer, make_precision, to_channels_last
        from common.losses import build_loss
        from common.model import build_student
        from common.recipes import RECIPES

        recipe = RECIPES[STAGE]
        torch.manual_seed(0)
        model = build_student("bg", backbone=args.backbone, pretrained="none").to(device)
        if amp and device.type == "cuda":
            model = to_channels_last(model)  # as common.training.stage does
        self.net = model
        if ddp_info is not None and ddp_info.enabled:
            self.net = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        total = args.warmup + args.rounds * args.steps
        self.opt, self.sched = make_optimizer(model, recipe.lr, recipe.weight_decay, total,
                                              recipe.warmup_fraction, recipe.lr_floor)
        self.precision = make_precision(device, amp)
        self.loss = build_loss(recipe.loss).to(device)
        self.augment = augmenter_for(recipe.augmentation)
        self.device = device
        self.grad_clip = recipe.grad_clip

    def run(self, batches: list[dict]) -> float:
        """Seconds for these batches, the device drained before and after."""
        from common.training.engine import train_one_epoch

        sync(self.device)
        t0 = time.perf_counter()
        train_one_epoch(self.net, batches, self.loss, self.opt, self.sched, self.precision,
                        augment=self.augment, grad_clip=self.grad_clip)
        sync(self.device)
        return time.perf_counter() - t0


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def augment_seconds(trainer: Trainer, batch: dict, repeats: int) -> float:
    """Seconds of the on-device augmentation of one batch (median of `repeats`)."""
    frames = batch["frames"].to(trainer.device).contiguous()  # as common.training.engine.to_device
    times = []
    for _ in range(repeats):
        sync(trainer.device)
        t0 = time.perf_counter()
        trainer.augment(frames, batch["seed"])
        sync(trainer.device)
        times.append(time.perf_counter() - t0)
    return S.median(times)


# ----------------------------------------------------------------------------- single device

def single_device(args, device) -> dict:
    batches = loader_batches(args)
    per_round = args.steps * args.batch_size
    out = {}
    trainers = {}
    for mode in ("fp32", "amp"):
        trainer = Trainer(args, device, amp=mode == "amp")
        reset_peak(device)
        trainer.run(steps_of(batches, args.warmup))  # allocator, cuDNN and autotuning warm-up
        trainers[mode] = trainer
    walls: dict[str, list[float]] = {"fp32": [], "amp": []}
    peaks: dict[str, list] = {"fp32": [], "amp": []}
    for r in range(args.rounds):
        for mode in (("fp32", "amp") if r % 2 == 0 else ("amp", "fp32")):
            reset_peak(device)
            walls[mode].append(trainers[mode].run(steps_of(batches, args.steps)))
            peaks[mode].append(peak_gib(device))
    aug_s = augment_seconds(trainers["amp"], batches[0], repeats=max(3, args.steps))
    step_s = S.median(walls["amp"]) / args.steps
    for mode in ("fp32", "amp"):
        # Peak while this mode trained (the other mode's weights and optimiser state, a few
        # hundred MB, are also resident: the figure is an upper bound).
        peak = max(peaks[mode]) if device.type == "cuda" else None
        out[mode] = {"images_per_s": per_round / S.median(walls[mode]), "peak_memory_gib": peak,
                     "step_s": S.median(walls[mode]) / args.steps}
    out["amp_vs_fp32"] = S.paired_ratio(walls["fp32"], walls["amp"])
    out["augment_s_per_batch"] = aug_s
    out["augment_fraction_of_amp_step"] = aug_s / step_s
    return out


# ----------------------------------------------------------------------------- torchrun

def ddp_child(args) -> None:
    """Inside torchrun: the AMP mode on every rank; rank 0 writes the total rate."""
    import torch

    from common.training import distributed

    device_type = "cpu" if args.cpu_smoke else "cuda"
    info = distributed.setup(device_type)
    device = torch.device("cuda", info.local_rank) if device_type == "cuda" else torch.device("cpu")
    try:
        batches = loader_batches(args)
        trainer = Trainer(args, device, amp=True, ddp_info=info)
        trainer.run(steps_of(batches, args.warmup))
        distributed.barrier(info)
        walls = [trainer.run(steps_of(batches, args.steps)) for _ in range(args.rounds)]
        wall = S.median(walls)
        rates = distributed.gather_objects(info, args.steps * args.batch_size / wall)
        if info.main:
            Path(args.ddp_child).write_text(json.dumps({"world": info.world, "rank_images_per_s": rates}))
    finally:
        distributed.cleanup(info)
    if args.cpu_smoke:
        # On the CPU (gloo), rank 0 aborted at interpreter exit in about one run in twenty
        # ("terminate called without an active exception"), after its figures were written and
        # the group destroyed on both ranks. The smoke run ends here, before that teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def scaling(args, one_gpu_rate: float, n: int) -> dict:
    """torchrun on n processes (GPUs) against one: total images/s and efficiency."""
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        result = Path(tmp) / "ddp.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}",
               "--master_port", str(free_port()), "-m", "tests.benchmarks.bench_gpu",
               *passthrough(args), "--ddp-child", str(result)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(S.REPO), os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.run(cmd, cwd=S.REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not result.is_file():
            return {"gpus": n, "error": (proc.stderr or proc.stdout)[-2000:]}
        got = json.loads(result.read_text())
    total = sum(got["rank_images_per_s"])
    return {"gpus": got["world"], "images_per_s": total, "one_gpu_images_per_s": one_gpu_rate,
            "scaling_efficiency": total / (got["world"] * one_gpu_rate)}


def passthrough(args) -> list[str]:
    keys = ("backbone", "image_size", "batch_size", "steps", "warmup", "rounds", "videos",
            "points", "distinct_batches", "cache_dir")
    out = []
    for k in keys:
        out += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    return out + (["--cpu-smoke"] if args.cpu_smoke else [])


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- main

def run(args, device) -> dict:
    import torch

    single = single_device(args, device)
    n = args.gpus or (torch.cuda.device_count() if device.type == "cuda" else 2)
    multi = scaling(args, single["amp"]["images_per_s"], n) if n > 1 and not args.no_ddp else \
        {"gpus": n, "skipped": "one visible GPU" if n <= 1 else "--no-ddp"}
    gpu = {}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu = {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
               "gpus_visible": torch.cuda.device_count(), "cuda": torch.version.cuda,
               "cudnn": torch.backends.cudnn.version(), "bf16": torch.cuda.is_bf16_supported(),
               "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
               "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
               "cudnn_benchmark": torch.backends.cudnn.benchmark}
    return S.rounded({
        "benchmark": "gpu",
        "figures": {"single_gpu": single, "multi_gpu": multi},
        "targets": {"amp_vs_fp32_min": TARGET_AMP_SPEEDUP},
        "pass": {"amp_vs_fp32": single["amp_vs_fp32"] >= TARGET_AMP_SPEEDUP},
        "conditions": S.conditions(
            device=str(device), smoke_on_cpu=bool(args.cpu_smoke), stage=STAGE, model="bg",
            backbone=args.backbone, image_size=args.image_size, batch_size_per_gpu=args.batch_size,
            steps_per_round=args.steps, warmup_steps=args.warmup, rounds=args.rounds,
            inputs=f"{args.distinct_batches} loader batches (synthetic face cache) cycled from pinned "
                   "host memory; copy, augmentation and train step per batch as in training",
            **gpu),
    }, digits=4)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_gpu",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench_gpu.json", help="where the JSON result goes")
    ap.add_argument("--backbone", default="efficientnet_b4")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32, help="per GPU, as --batch-size in training")
    ap.add_argument("--steps", type=int, default=40, help="optimiser steps per timed slice")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps before the first slice")
    ap.add_argument("--rounds", type=int, default=3, help="timed slices per mode, alternating")
    ap.add_argument("--gpus", type=int, default=0, help="GPUs for the torchrun part (default: all visible)")
    ap.add_argument("--no-ddp", action="store_true", help="skip the torchrun part")
    ap.add_argument("--videos", type=int, default=8, help="synthetic cache entries")
    ap.add_argument("--points", type=int, default=8, help="sample points per cache entry")
    ap.add_argument("--distinct-batches", type=int, default=4)
    ap.add_argument("--cache-dir", default=S.DEFAULT_CACHE_DIR)
    ap.add_argument("--cpu-smoke", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ddp-child", default=None, help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> dict | None:
    import torch

    args = parser().parse_args(argv)
    if args.ddp_child:
        ddp_child(args)
        return None
    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("no CUDA device")
        return None
    result = S.emit(run(args, torch.device("cpu") if args.cpu_smoke else torch.device("cuda")))
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)  # atomic: a reader never sees half a file
    return result


if __name__ == "__main__":
    main()
