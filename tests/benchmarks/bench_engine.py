"""Engine overhead: common.training.engine.train_one_epoch against a minimal hand-written loop.

    python -m tests.benchmarks.bench_engine [--backbone mobilenet_v3_small] [--rounds 6]

Same model (one instance, an optimiser per side), same batches (held in memory, so no loader
cost on either side), same loss; side by side, order alternating per round. The engine
side is what a stage runs: precision (AMP off on the CPU), gradient clipping, the scheduler,
the non-finite-loss check, running loss, a tqdm progress bar and an on_step callback. The
hand loop is forward, loss, zero_grad, backward, AdamW step. Target: at most 5% slower.
A small backbone is the strict case: the engine's per-step cost is fixed, so the cheaper
the step, the larger its share. As a cross-check with less noise, the same two loops also
run on tiny batches, where the difference is the engine's fixed work per step in ms.
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks import _shared as S  # noqa: E402

TARGET_OVERHEAD = 0.05


def engine_loop(model, opt, sched, loss_fn, precision, batches, grad_clip: float | None = None) -> dict:
    from tqdm import tqdm

    from common.training.engine import train_one_epoch

    bar = tqdm(total=len(batches), file=io.StringIO(), mininterval=0)  # renders, to nowhere
    try:
        return train_one_epoch(model, batches, loss_fn, opt, sched, precision, grad_clip=grad_clip, progress=bar,
                               on_step=lambda n: None, stop_requested=lambda: False)
    finally:
        bar.close()


def run(args) -> dict:
    import torch

    from common.training.engine import make_optimizer, make_precision
    from common.losses import build_loss
    from common.model import CLIP_MODELS, build_student
    from common.recipes import RECIPES

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)  # on a shared machine extra threads spin on busy cores
    recipe = RECIPES[args.stage]
    clip = args.clip_len if args.model in CLIP_MODELS else 1
    g = torch.Generator().manual_seed(0)
    batches = [{"frames": torch.randn(args.batch_size, clip, 3, args.image_size, args.image_size,
                                      generator=g),
                "label": torch.arange(args.batch_size) % 2,
                "video": [f"v{i}" for i in range(args.batch_size)]}
               for _ in range(args.steps)]
    if args.model == "av":
        from common.data.audio import MEL_WINDOW, N_MELS

        for b in batches:
            b["mel"] = torch.randn(args.batch_size, 1, N_MELS, MEL_WINDOW, generator=g)
            b["audio_missing"] = torch.zeros(args.batch_size)
    loss_fn = build_loss(recipe.loss, class_counts=[args.batch_size // 2, args.batch_size // 2])

    # One model for both sides (each with its own optimiser): the same weights in the same
    # memory, so the only difference between the sides is the loop around the step.
    model_e = model_h = build_student(args.model, backbone=args.backbone, pretrained="none",
                                      clip_len=args.clip_len)
    total = args.steps * (args.rounds + 1)
    opt_e, sched_e = make_optimizer(model_e, recipe.lr, recipe.weight_decay, total,
                                    recipe.warmup_fraction, recipe.lr_floor)
    opt_h = torch.optim.AdamW(model_h.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    precision = make_precision(torch.device("cpu"), amp=True)  # AMP is a no-op on the CPU
    assert precision.dtype is None

    if args.model == "av":
        def fwd(m, b):
            return m(b["frames"], mel=b["mel"], audio_missing=b["audio_missing"])
    else:
        def fwd(m, b):
            return m(b["frames"])

    def hand(batches=batches):
        model_h.train()
        for batch in batches:
            loss = loss_fn(fwd(model_h, batch), batch["label"])
            opt_h.zero_grad(set_to_none=True)
            loss.backward()
            opt_h.step()

    def engine(batches=batches):
        return engine_loop(model_e, opt_e, sched_e, loss_fn, precision, batches, recipe.grad_clip)

    hand(batches[:1])  # warm-up: first-step allocations, optimiser state
    engine(batches[:1])
    res = S.interleaved({"engine": engine, "hand": hand}, args.rounds)

    # Cross-check with less noise: the engine's extra work per step (gradient clipping over
    # every parameter, scheduler, checks, progress bar) does not depend on the batch, so
    # time both loops with the same model on tiny batches, where that work is a large,
    # measurable share, and set the difference against the full step.
    tiny = [{"frames": b["frames"][:2, :, :, :32, :32].contiguous(), "label": b["label"][:2],
             "video": b["video"][:2], **({k: b[k][:2] for k in ("mel", "audio_missing")}
                                         if args.model == "av" else {})}
            for b in batches] * 3
    hand(tiny[:1])
    engine(tiny[:1])
    small = S.interleaved({"engine": lambda: engine(tiny), "hand": lambda: hand(tiny)},
                          args.rounds)
    fixed_s = (S.median(small["engine"]["wall"]) - S.median(small["hand"]["wall"])) / len(tiny)
    ratio = S.paired_ratio(res["engine"]["wall"], res["hand"]["wall"])
    ratio_cpu = S.paired_ratio(res["engine"]["cpu"], res["hand"]["cpu"])
    step_e = S.median(res["engine"]["wall"]) / args.steps
    step_h = S.median(res["hand"]["wall"]) / args.steps
    return S.rounded({
        "benchmark": "engine",
        "figures": {
            "engine_vs_hand": ratio,
            "overhead": ratio - 1.0,
            "engine_vs_hand_cpu": ratio_cpu,
            "step_s_engine": step_e,
            "step_s_hand": step_h,
            "overhead_ms_per_step": (step_e - step_h) * 1000,
            "engine_vs_hand_fastest": min(res["engine"]["wall"]) / min(res["hand"]["wall"]),
            "engine_extra_ms_per_step_tiny_batches": fixed_s * 1000,
            "overhead_from_extra_work": fixed_s / step_h,
            "rounds_engine_vs_hand": [a / b for a, b in zip(res["engine"]["wall"],
                                                            res["hand"]["wall"])],
        },
        "targets": {"overhead_max": TARGET_OVERHEAD},
        "pass": {"overhead": ratio - 1.0 <= TARGET_OVERHEAD},
        "conditions": S.conditions(
            model=args.model, backbone=args.backbone, image_size=args.image_size,
            frames_per_sample=clip, batch_size=args.batch_size, steps_per_round=args.steps,
            rounds=args.rounds, stage=args.stage, loss=recipe.loss, device="cpu",
            threads=args.threads,
            amp="off (CPU)", data="batches held in memory, same for both sides",
            engine_side="common.training.engine.train_one_epoch + make_optimizer (AdamW + warmup-cosine) "
                        "+ make_precision + tqdm + on_step",
            hand_side="forward, loss, zero_grad, backward, AdamW step"),
    })


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_engine",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="bg", choices=("bg", "av", "cm", "rr", "tm"))
    ap.add_argument("--backbone", default="mobilenet_v3_small")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--clip-len", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=2, help="optimiser steps per round and side")
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (both sides)")
    ap.add_argument("--stage", default="stage4_dfdc",
                    choices=("stage1_faceforensics", "stage2_celebdf", "stage4_dfdc"))
    return ap


def main(argv: list[str] | None = None) -> dict:
    return S.emit(run(parser().parse_args(argv)))


if __name__ == "__main__":
    main()
