"""CM on the native view against CM on resized face crops: which one tells compression levels apart.

    python -m tests.benchmarks.bench_views [--sources 16] [--steps 40] [--seeds 0 1 2] ...

The same synthetic face videos (common.data.synthetic.face_video) are written twice, at H.264
CRF 18 (label 0) and CRF 35 (label 1). Both views come from one extraction (the one face path,
Haar boxes), each through its face-cache codec as training reads it (common/faces/codec.py:
face H.264 runs, native lossless). Two CM students with the same seed, backbone, batches and steps are trained, one
on each view with that view's stage-1 augmentation (augment.view_level), and scored on held-out
sources (both codings of a source are on the same side of the split), once per seed. Figures:
the mean video and frame AUCs of each view side by side, and native minus face. The verdict:
native is ahead (frame AUC higher, video AUC not lower). Each source gets its own blur and
grain before coding, so a crop's overall smoothness is no shortcut to its CRF.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np
import torch

from tests.benchmarks._shared import conditions, emit


def write_crf(path: Path, frames: np.ndarray, crf: int, fps: float = 25.0) -> None:
    """RGB uint8 [N, H, W, 3] as H.264 yuv420p at this CRF (write_mp4 fixes CRF 18)."""
    h, w = frames.shape[1:3]
    with av.open(str(path), mode="w", format="mp4") as box:
        vs = box.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"crf": str(crf), "preset": "veryfast"}
        vs.codec_context.thread_count = 1
        for frame in frames:
            for packet in vs.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                box.mux(packet)
        box.mux(vs.encode())


def _vary(clip: np.ndarray, seed: int) -> np.ndarray:
    """Each source its own sharpness and grain, so how smooth a crop looks says little about
    its coding: what tells CRF 35 from CRF 18 is then mostly the codec's own 8x8 traces."""
    import cv2

    rng = np.random.default_rng(10_000 + seed)
    sigma, grain = rng.uniform(0.3, 1.6), rng.uniform(0.0, 5.0)
    out = np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in clip]).astype(np.float32)
    out += rng.standard_normal(out.shape, dtype=np.float32) * grain
    return np.clip(out, 0, 255).astype(np.uint8)


def make_views(work: Path, sources: int, frames: int, size: tuple[int, int], crfs: tuple[int, int],
               points: int, crop: int) -> dict:
    """{view: (crops [V, points, S, S, 3], labels [V], source [V])} for face and native."""
    from common.data.synthetic import face_video
    from common.faces import codec
    from common.faces.detectors import make_detector
    from common.faces.extraction import video_views

    def stored(frames: np.ndarray, view: str) -> np.ndarray:  # what the cache gives back
        return codec.round_trip(frames[:, None], view)[:, 0]  # a one-frame run per point

    det = make_detector("haar")
    out: dict = {"face": [], "native": [], "label": [], "source": []}
    for s in range(sources):
        clip = _vary(face_video(frames, size=size, identity=s % 6, seed=s), s)
        for label, crf in enumerate(crfs):
            path = work / f"s{s}_crf{crf}.mp4"
            write_crf(path, clip, crf)
            crops, _ = video_views(str(path), points, 1, crop, det, views=("face", "native"))
            if len(crops["face"]) < points:  # a point without a face: keep the sets aligned
                continue
            out["face"].append(stored(crops["face"][:, 0], "face"))
            out["native"].append(stored(crops["native"][:, 0], "native"))
            out["label"].append(label)
            out["source"].append(s)
    return {k: np.stack(v) if k in ("face", "native") else np.array(v) for k, v in out.items()}


def train_and_score(crops: np.ndarray, labels: np.ndarray, train: np.ndarray, view: str,
                    steps: int, batch: int, lr: float, backbone: str, seed: int) -> dict:
    """One CM student on one view for a fixed number of steps; AUCs on the held-out videos."""
    from common.training.augment import augmenter_for
    from common.training.metrics import binary_metrics
    from common.model import build_student

    torch.manual_seed(seed)
    model = build_student("cm", backbone, "none", clip_len=1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    aug = augmenter_for("minimal", view, crops.shape[-2])
    v_idx, p_idx = np.nonzero(train[:, None] & np.ones(crops.shape[1], bool))
    x = torch.from_numpy(crops).permute(0, 1, 4, 2, 3)  # [V, P, 3, S, S] uint8
    y = torch.from_numpy(labels).long()
    g = np.random.default_rng(seed)
    model.train()
    for step in range(steps):
        pick = g.integers(0, len(v_idx), batch)
        frames = x[v_idx[pick], p_idx[pick]][:, None]  # [B, 1, 3, S, S]
        seeds = torch.tensor(seed * 1_000_003 + step * batch + np.arange(batch))
        loss = torch.nn.functional.cross_entropy(model(aug(frames, seeds)), y[v_idx[pick]])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test = np.nonzero(~train)[0]
    with torch.no_grad():
        logits = model(x[test].reshape(-1, 1, *x.shape[2:]))
    p = torch.softmax(logits.float(), 1)[:, 1].reshape(len(test), -1).numpy()
    return {"video_auc": binary_metrics(labels[test], p.mean(1))["auc"],
            "frame_auc": binary_metrics(np.repeat(labels[test], p.shape[1]), p.reshape(-1))["auc"],
            "final_train_loss": float(loss.detach())}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_views", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sources", type=int, default=16, help="source clips; each is written at both CRFs")
    p.add_argument("--test-sources", type=int, default=6, help="of them, held out for scoring")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--crf", type=int, nargs=2, default=(18, 35))
    p.add_argument("--points", type=int, default=4, help="sample points per video")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--backbone", default="mobilenet_v3_small")
    p.add_argument("--seeds", type=int, nargs="+", default=(0, 1, 2),
                   help="one pair of students per seed (model init, batches, augmentation)")
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-views-") as tmp:
        data = make_views(Path(tmp), args.sources, args.frames, (args.width, args.height),
                          tuple(args.crf), args.points, args.image_size)
    extracted_s = time.perf_counter() - t0
    train = data["source"] >= args.test_sources  # sources 0 .. test_sources-1 are held out
    runs = {view: [train_and_score(data[view], data["label"], train, view, args.steps, args.batch_size,
                                   args.lr, args.backbone, seed) for seed in args.seeds]
            for view in ("native", "face")}
    mean = {f"{view}_{k}": float(np.mean([r[k] for r in runs[view]]))
            for view in runs for k in ("video_auc", "frame_auc")}
    figures = {**mean,
               "native_minus_face_video_auc": mean["native_video_auc"] - mean["face_video_auc"],
               "native_minus_face_frame_auc": mean["native_frame_auc"] - mean["face_frame_auc"],
               "native_ahead_in_seeds": sum(n["frame_auc"] > f["frame_auc"]
                                            for n, f in zip(runs["native"], runs["face"])),
               "seeds": len(args.seeds), "held_out_videos": int((~train).sum()),
               "train_videos": int(train.sum()), "extract_s": round(extracted_s, 2),
               "total_s": round(time.perf_counter() - t0, 2)}
    return emit({"benchmark": "views", "conditions": conditions(args=vars(args)), "figures": figures,
                 "runs": runs,
                 "pass": {"native_ahead": figures["native_minus_face_frame_auc"] > 0
                          and figures["native_minus_face_video_auc"] >= 0}})


if __name__ == "__main__":
    sys.exit(0 if main()["pass"]["native_ahead"] else 1)
