"""Ctrl-C and SIGTERM during a stage: finish the step, save `_last.pt`, stop cleanly.

A Kaggle session or a cluster scheduler ends a job with SIGTERM; the stage then saves its
state and exits so that the same command with --resume continues where it stopped.
"""
from __future__ import annotations

import logging
import signal

import torch

log = logging.getLogger("train")


class StageInterrupted(RuntimeError):
    """SIGINT/SIGTERM: state was saved to _last.pt; rerun with --resume."""


class StopFlag:
    """Set by SIGINT/SIGTERM; checked after each optimiser step (agreed across ranks)."""

    def __init__(self, dist_info, device: torch.device = torch.device("cpu")):
        self.dist_info, self.raised = dist_info, False
        self.device = device  # NCCL reduces CUDA tensors only
        self._previous = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def close(self) -> None:
        """Give the signals back to whoever had them (in-process callers: tests, notebooks)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handler(self, signum, frame):
        if self.raised:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.raised = True
        log.warning("signal %d: saving state after this step, then stopping", signum)

    def any_rank(self) -> bool:
        """Whether a signal reached any rank (a collective under torchrun: all ranks call it)."""
        if not self.dist_info.enabled:
            return self.raised
        flag = torch.tensor([1.0 if self.raised else 0.0], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def __call__(self) -> bool:
        return self.any_rank()

    def check_extraction(self) -> None:
        """After a face-cache build: stop now if a signal came (finished entries are kept)."""
        if self.any_rank():
            raise StageInterrupted("stopped during face extraction (finished videos stay cached); "
                                   "rerun the same command with --resume")
