"""The training loop: one epoch of optimisation, one validation pass, AMP and the schedule.

Kept free of datasets and files: it sees a model, a loader, a loss and an optimiser.
"""
from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from dataclasses import dataclass

import torch
from torch import nn

from common.training import distributed
from common.training.metrics import evaluate


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf: training stops, the last good checkpoint is kept."""


class WorkerDied(RuntimeError):
    """A DataLoader worker process died (killed, often by the out-of-memory killer).
    `steps`: the optimiser steps this epoch had finished; the weights are as they left them."""

    def __init__(self, message: str, steps: int = 0):
        super().__init__(message)
        self.steps = steps


@contextlib.contextmanager
def batches(loader):
    """Iterate `loader` so that a dead worker surfaces only between steps, as WorkerDied.

    torch reports a dead worker from its SIGCHLD handler, which Python runs wherever the main
    thread happens to be: mid-forward, or half-way through an optimiser step, whose state a
    save would then keep. Here torch's check runs at once only while a batch is being fetched;
    during a step the signal is noted, and checked before the next fetch."""
    it = iter(loader)  # starts the workers, and installs torch's handler once per process
    # Only a loader with worker processes needs this, and only the main thread may set a handler.
    watch = getattr(loader, "num_workers", 0) > 0 and threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGCHLD) if watch else None
    state = {"pending": False, "fetching": False}

    def on_child(signum, frame):
        if state["fetching"] and callable(previous):
            previous(signum, frame)  # torch's check, raising inside next(): nothing half-done
        else:
            state["pending"] = True

    if watch:
        signal.signal(signal.SIGCHLD, on_child)

    def fetched():
        while True:
            try:
                state["fetching"] = True
                if state["pending"] and callable(previous):
                    state["pending"] = False
                    previous(signal.SIGCHLD, None)  # raises if one of its workers died
                batch = next(it)
            except StopIteration:
                return
            except RuntimeError as e:
                if not str(e).startswith("DataLoader worker (pid"):
                    raise
                raise WorkerDied(str(e).split(". ")[0].strip().rstrip(".")) from None
            finally:
                state["fetching"] = False
            yield batch
    try:
        yield fetched()
    finally:
        if watch:
            signal.signal(signal.SIGCHLD, previous)


@dataclass
class Precision:
    """How the forward pass runs: AMP dtype (or none) and a grad scaler for fp16."""
    device: torch.device
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


def to_channels_last(model: nn.Module) -> nn.Module:
    """NHWC weights for every 2-D convolution: the layout tensor cores want under AMP.
    5-D weights (TM's Conv3d) keep theirs: Module.to(memory_format=channels_last) raises
    on them, which is how TM failed to start on the first CUDA run."""
    for p in model.parameters():
        if p.dim() == 4:
            p.data = p.data.contiguous(memory_format=torch.channels_last)
    return model


def make_precision(device: torch.device, amp: bool) -> Precision:
    """bf16 where the GPU supports it, else fp16 with a scaler; full precision on the CPU."""
    dtype = None
    if device.type == "cuda":
        # every batch has the same shape, so cuDNN's per-shape kernel search pays for itself
        # (fp32 efficientnet_b4 on an H200: 446-497 -> 648 img/s in a probe)
        torch.backends.cudnn.benchmark = True
    if amp and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    return Precision(device, dtype, scaler)


def warmup_cosine(total_steps: int, warmup_fraction: float, floor: float):
    """LR multiplier per optimiser step: linear warmup, then cosine down to `floor`."""
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, total_steps: int,
                   warmup_fraction: float, lr_floor: float, lr_multipliers: dict[str, float] | None = None):
    """AdamW (no decay on biases and norms) and a per-iteration warmup + cosine schedule.

    lr_multipliers: parameter-name prefix -> factor on `lr` for those parameters (e.g. AV's
    audio branch at stage 4, its first audio). Each (factor, decay) pair is one param group;
    the schedule scales every group alike."""
    lr_multipliers = {k: float(v) for k, v in (lr_multipliers or {}).items() if float(v) != 1.0}
    groups: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        factor = next((f for prefix, f in lr_multipliers.items() if name.startswith(prefix)), 1.0)
        groups.setdefault((factor, p.ndim > 1), []).append(p)
    order = sorted(groups, key=lambda k: (k[0] != 1.0, k[0], not k[1]))  # base groups first
    opt = torch.optim.AdamW([{"params": groups[k], "lr": lr * k[0],
                              "weight_decay": weight_decay if k[1] else 0.0} for k in order], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total_steps, warmup_fraction, lr_floor))
    return opt, sched


# Stays on the host: the augmentation draws its parameters there (reading them back from a
# GPU would stall every step).
_HOST_KEYS = ("seed",)


def to_device(batch: dict, device: torch.device) -> dict:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and k not in _HOST_KEYS:
            # uint8 frames come channels-last (common.data.samples.collate_samples): transposed here.
            v = v.to(device, non_blocking=True).contiguous()
        out[k] = v
    return out


def forward(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(batch["frames"], mel=batch.get("mel"), audio_missing=batch.get("audio_missing"))


def train_one_epoch(model: nn.Module, loader, loss_fn: nn.Module, optimizer, scheduler,
                    precision: Precision, *, augment=None, grad_clip: float | None = None, progress=None,
                    on_step=None, stop_requested=lambda: False) -> dict:
    """One pass over `loader`. Returns mean loss, samples seen, samples/s and whether it was stopped.

    `augment(frames, seeds)` (a common.training.augment.ClipAugmenter) runs on the training device, on
    the whole batch, before the forward pass; the batches then need a "seed" per sample.
    `on_step(batches_done)` runs after every optimiser step (used for mid-epoch saves);
    `stop_requested()` ends the epoch early after the current step (SIGTERM/SIGINT).
    """
    model.train()
    device = precision.device
    total_loss, seen, steps = 0.0, 0, 0
    start = time.perf_counter()
    stopped = False
    with batches(loader) as fetched:
        try:
            for batch in fetched:
                batch = to_device(batch, device)
                if augment is not None:  # in full precision, outside autocast
                    batch["frames"] = augment(batch["frames"], batch["seed"])
                labels = batch["label"]
                with precision.autocast():
                    logits = forward(model, batch)
                loss = loss_fn(logits.float(), labels)
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(f"loss is {loss.item()} at step {steps} of this epoch; "
                                             "lower --lr or check the data; the last good checkpoint is kept")
                optimizer.zero_grad(set_to_none=True)
                precision.scaler.scale(loss).backward()
                precision.scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                if grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                precision.scaler.step(optimizer)
                precision.scaler.update()
                scheduler.step()
                steps += 1
                n = labels.shape[0]
                seen += n
                total_loss += loss.item() * n
                if progress is not None:
                    rate = seen / max(1e-9, time.perf_counter() - start)
                    progress.set_postfix(loss=f"{total_loss / seen:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                                         samples_s=f"{rate:.1f}")
                    progress.update(1)
                if on_step is not None:
                    on_step(steps)
                if stop_requested():
                    stopped = True
                    break
        except WorkerDied as e:
            e.steps = steps  # the weights are as these steps left them
            raise
    elapsed = time.perf_counter() - start
    return {"loss": total_loss / max(1, seen), "samples": seen, "steps": steps,
            "samples_per_s": seen / max(1e-9, elapsed), "stopped": stopped}


@torch.no_grad()
def predict(model: nn.Module, loader, precision: Precision, dist_info=None):
    """Logits, labels and video ids of every sample in `loader`, gathered from all ranks."""
    model.eval()
    ids: list[str] = []
    labels: list[int] = []
    logits: list[torch.Tensor] = []
    with batches(loader) as fetched:
        for batch in fetched:
            batch = to_device(batch, precision.device)
            with precision.autocast():
                out = forward(model, batch)
            logits.append(out.float().cpu())
            labels.extend(batch["label"].cpu().tolist())
            ids.extend(batch["video"])
    local = (ids, labels, torch.cat(logits) if logits else torch.zeros(0, 2))
    if dist_info is not None and dist_info.enabled:
        parts = distributed.gather_objects(dist_info, local)
        ids = [i for p in parts for i in p[0]]
        labels = [y for p in parts for y in p[1]]
        return ids, labels, torch.cat([p[2] for p in parts])
    return local


def validate(model: nn.Module, loader, loss_fn: nn.Module, precision: Precision, dist_info=None):
    """Validation metrics (frame, video, collapse guard) plus the raw logits for calibration."""
    ids, labels, logits = predict(model, loader, precision, dist_info)
    y = torch.tensor(labels, dtype=torch.long)
    metrics = evaluate(ids, labels, logits)
    dev = precision.device  # where the loss's class weights live
    metrics["loss"] = float(loss_fn(logits.to(dev), y.to(dev))) if len(labels) else math.nan
    return metrics, (ids, y, logits)
