"""Small synthetic copies of the FaceForensics++, Celeb-DF v2 and DFDC trees.

    python -m common.sample_data OUT [--size tiny|smoke|demo] [--seed N] [--force]

Sizes (SIZES): "tiny" (the default, ~75 videos) for the test suite, "smoke" = tiny plus a
DFDC part to hold out, "demo" (~270 videos, a clearer swap seam) for python -m common.demo.

Faces come from scikit-image's bundled astronaut photo (no network): each "identity" is
that face (maybe mirrored) with its own skin and hair colours, on its own smooth background,
moving a little over time, with a mouth that opens and closes; the project's Haar detector
(common.faces.detectors.make_detector("haar")) finds it in (nearly) every frame of every video. A
fake keeps its original's motion but has the inner face of another identity blended in
with a soft mask, blurred and colour-mismatched, so a classifier on face crops can learn
real vs fake. DFDC videos carry an AAC track whose loudness follows the mouth; in DFDC
fakes the mouth follows a different envelope.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import av
import cv2
import numpy as np

from common.errors import UserError

# A tight crop of the face in the 512x512 astronaut (OpenCV's frontal Haar cascade finds it
# at x 177-270, y 67-160): eyes, nose and mouth fill most of it, so the cascade still finds
# the face when the head is only 64-72 px on screen. Ellipses are (centre x,y; axes) in crop px.
_HEAD_CROP = (slice(45, 181), slice(155, 291))
_CROP = 136                                     # side of that crop
_HEAD_MASK = ((68, 66), (57, 62))               # the visible head (face and some hair)
_INNER = ((70, 80), (36, 46))                   # inner face: eyebrows to chin
_SKIN = ((70, 82), (46, 54))                    # the whole face: hair is outside
_MOUTH = ((70, 98), (21, 6))                    # mouth
_FACE_FRAC = 0.6                                # head side / short side of the frame

FF_METHODS = ("Deepfakes", "FaceSwap")


# ---------------------------------------------------------------- writing
def write_mp4(path: str | Path, frames: np.ndarray, fps: float = 25.0,
              audio: np.ndarray | None = None, sample_rate: int = 44100) -> None:
    """Write RGB uint8 frames [N,H,W,3] as H.264 (yuv420p) mp4, plus an AAC track when
    `audio` (float in [-1, 1], [n] mono or [n, channels]) is given. The file appears
    atomically: it is written next to `path` and then renamed."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise ValueError(f"frames must be uint8 [N,H,W,3] with N > 0, got {frames.dtype} {frames.shape}")
    h, w = frames.shape[1:3]
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs even width and height, got {w}x{h}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with av.open(str(tmp), mode="w", format="mp4") as box:
            vs = box.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
            vs.options = {"crf": "18", "preset": "veryfast"}
            vs.codec_context.thread_count = 1  # tiny frames: threads only cost start-up time
            ast = None
            if audio is not None:
                audio = np.asarray(audio, dtype=np.float32)
                audio = audio[:, None] if audio.ndim == 1 else audio
                layout = {1: "mono", 2: "stereo"}[audio.shape[1]]
                ast = box.add_stream("aac", rate=sample_rate, layout=layout)
            for frame in frames:
                for packet in vs.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    box.mux(packet)
            box.mux(vs.encode())
            if ast is not None:
                planar = np.ascontiguousarray(np.clip(audio, -1, 1).T)
                for start in range(0, planar.shape[1], 1024):
                    chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(planar[:, start:start + 1024]),
                                                       format="fltp", layout=layout)
                    chunk.sample_rate, chunk.pts = sample_rate, start
                    box.mux(ast.encode(chunk))
                box.mux(ast.encode())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# ---------------------------------------------------------------- faces
def _ellipse_mask(shape: tuple[int, int], centre, axes, feather: float) -> np.ndarray:
    """Float mask in [0, 1] with a soft edge `feather` px wide."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    r = np.sqrt(((xx - centre[0]) / axes[0]) ** 2 + ((yy - centre[1]) / axes[1]) ** 2)
    return np.clip((1.0 - r) * min(axes) / max(feather, 1e-3) + 0.5, 0.0, 1.0)


def _crop_mask(px: int, identity: int, centre, axes, feather: float) -> np.ndarray:
    """An ellipse given in astronaut-crop pixels, on one identity's (maybe mirrored) head."""
    s = px / _CROP
    cx = _CROP - centre[0] if identity % 2 else centre[0]
    return _ellipse_mask((px, px), (cx * s, centre[1] * s), (axes[0] * s, axes[1] * s),
                         feather * s)[..., None]


@lru_cache(maxsize=1)
def _astronaut_head() -> np.ndarray:
    from skimage import data  # bundled with scikit-image; no download

    return data.astronaut()[_HEAD_CROP].astype(np.float32)


_TO_YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5],
                    [0.5, -0.418688, -0.081312]], np.float32)  # RGB -> (Y, Cb, Cr) (JPEG)


def _look(seed: int, bright: tuple[float, float], gain: tuple[float, float],
          turn: float) -> np.ndarray:
    """A random RGB -> RGB colour matrix: brightness, chroma saturation, hue turn."""
    rng = np.random.default_rng(seed)
    b = rng.uniform(*bright)
    g = rng.uniform(*gain, 2)
    a = rng.uniform(-turn, turn)
    ycc = np.zeros((3, 3))
    ycc[0, 0] = b
    ycc[1:, 1:] = b * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) * g[:, None]
    return (np.linalg.inv(_TO_YCC) @ ycc @ _TO_YCC).astype(np.float32)


@lru_cache(maxsize=256)
def _head(identity: int, px: int, mirror: bool) -> tuple[np.ndarray, np.ndarray]:
    """(RGB float32 [px,px,3], alpha [px,px,1]) of one identity's head: its own skin and
    hair colours. The skin mostly changes hue and only a little in brightness: the grey
    image, which the Haar cascade sees, keeps the eyes / nose / mouth contrast."""
    src = _astronaut_head()
    skin = src @ _look(10_000 + identity, (0.72, 0.95), (0.6, 1.5), 0.6).T
    hair = src @ _look(20_000 + identity, (0.45, 1.1), (0.3, 1.4), 0.5).T
    face = _crop_mask(_CROP, 0, *_SKIN, feather=8)
    head = skin * face + hair * (1 - face)
    if mirror:
        head = head[:, ::-1]
    head = cv2.resize(np.clip(head, 0, 255), (px, px), interpolation=cv2.INTER_AREA)
    alpha = _crop_mask(px, 0, *_HEAD_MASK, feather=6)
    return head, alpha


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A smooth 'room' behind the head, float32 [h, w, 3]: a wide ramp of grey levels in a
    random direction, some large patches of colour and a little grain. (The Haar detector
    equalises the histogram of the frame first: a flat background with grain puts a narrow
    band of greys there, equalisation spreads it over the whole range, the face's greys get
    bent out of shape and the cascade misses it. A wide, even spread of greys avoids that.)"""
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (xx - w / 2) * np.cos(angle) + (yy - h / 2) * np.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)               # 0..1 across the frame
    lo = rng.uniform(15, 60)
    grey = lo + t * rng.uniform(150, 230 - lo)
    colour = rng.uniform(0.75, 1.25, 3).astype(np.float32)
    patches = cv2.resize(rng.uniform(-20, 20, (3, 4, 3)).astype(np.float32), (w, h),
                         interpolation=cv2.INTER_CUBIC)
    room = grey[..., None] * colour + patches + rng.normal(0, 2, (h, w, 3))
    return np.clip(room, 0, 255).astype(np.float32)


def mouth_envelope(n_frames: int, fps: float = 25.0, seed: int = 0) -> np.ndarray:
    """Smooth 'speech' loudness in [0, 1] per frame."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames) / fps
    env = sum(rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * rng.uniform(1.5, 5.0) * t + rng.uniform(0, 6.3))
              for _ in range(3))
    return np.clip(0.5 + 0.4 * env / 1.5, 0.0, 1.0).astype(np.float32)


def face_video(n_frames: int, size: tuple[int, int] = (160, 120), identity: int = 0,
               seed: int = 0, *, swap: int | None = None, face_px: int | None = None,
               fps: float = 25.0, mouth: np.ndarray | None = None,
               blur: float = 1.0, tint: float = 1.0) -> np.ndarray:
    """RGB uint8 [n_frames, H, W, 3]: one identity's head drifting slowly over its own
    background. `swap` = another identity whose inner face is blended in (a fake); the
    motion depends only on (identity, seed), so a fake lines up with its original.
    `mouth` = per-frame opening in [0, 1] (default: mouth_envelope(seed)). `blur` and `tint`
    set how visible the swap is (1 = the tiny test trees' subtle seam)."""
    w, h = size
    px = min(face_px or int(min(w, h) * _FACE_FRAC), w, h)
    head, alpha = _head(identity, px, bool(identity % 2))
    rng = np.random.default_rng(seed * 1000 + identity)
    background = _background(rng, w, h)
    if swap is not None:  # inner face of `swap`, blurred and tinted, feathered into `head`
        other, _ = _head(swap, px, bool(identity % 2))  # aligned with the target's face
        # brighter by `tint`, and (above 1) warmer too: a colour seam that CLAHE leaves in place
        shift = 6 * tint + (tint - 1) * np.array([6, 0, -6], np.float32)
        other = cv2.GaussianBlur(other, (0, 0), blur) * np.float32(1 + 0.08 * tint) + shift
        inner = _crop_mask(px, identity, *_INNER, feather=3)
        head = head * (1 - inner) + other * inner
    mouth = mouth_envelope(n_frames, fps, seed) if mouth is None else mouth
    mouth_mask = _crop_mask(px, identity, *_MOUTH, feather=2)
    phase, freq = rng.uniform(0, 6.3, 2), rng.uniform(0.3, 0.8, 2)
    cx, cy = (w - px) / 2, (h - px) / 2
    amp = np.minimum([cx, cy], px * 0.08)
    noise = np.random.default_rng(seed + 7)
    out = np.empty((n_frames, h, w, 3), np.uint8)
    for i in range(n_frames):
        t = i / fps
        x = int(round(cx + amp[0] * np.sin(2 * np.pi * freq[0] * t + phase[0])))
        y = int(round(cy + amp[1] * np.sin(2 * np.pi * freq[1] * t + phase[1])))
        face = head * (1 - np.float32(0.55 * mouth[i]) * mouth_mask)  # darker = mouth open
        frame = background.copy()
        region = frame[y:y + px, x:x + px]
        region[:] = region * (1 - alpha) + face * alpha
        frame += noise.standard_normal(frame.shape, dtype=np.float32) * 2.0
        out[i] = np.clip(frame, 0, 255).astype(np.uint8)
    return out


def speech_audio(envelope: np.ndarray, fps: float, sample_rate: int = 44100,
                 seed: int = 0) -> np.ndarray:
    """Stereo float32 [n, 2]: a voiced buzz whose loudness follows `envelope`."""
    rng = np.random.default_rng(seed)
    n = int(round(len(envelope) / fps * sample_rate))
    t = np.arange(n) / sample_rate
    loud = np.interp(t, np.arange(len(envelope)) / fps, envelope)
    f0 = rng.uniform(110, 220)
    voice = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in (1, 2, 3)) / 1.8
    mono = 0.5 * loud * voice + 0.01 * rng.normal(size=n)
    return np.stack([mono, 0.9 * mono], axis=1).astype(np.float32)


# ---------------------------------------------------------------- trees
def _prepare(root: Path, force: bool) -> Path:
    root = Path(root)
    if root.is_dir() and any(root.iterdir()) and not force:
        raise UserError(f"{root}: already exists and is not empty (use --force to write over it)")
    root.mkdir(parents=True, exist_ok=True)
    return root


def make_faceforensics(root: str | Path, seed: int = 0, *, n_pairs: int = 6, n_frames: int = 24,
                       size: tuple[int, int] = (160, 120), force: bool = False,
                       n_val_pairs: int = 1, n_test_pairs: int = 1, tint: float = 1.0) -> list[Path]:
    """original_sequences/youtube/c23 + two methods + splits/{train,val,test}.json.
    n_pairs pairs -> 2*n_pairs originals and 4*n_pairs fakes; the last pairs are val, then test."""
    if n_pairs - n_val_pairs - n_test_pairs < 1 or min(n_val_pairs, n_test_pairs) < 1:
        raise ValueError(f"need a train, a val and a test pair, got {n_pairs} pairs "
                         f"({n_val_pairs} val, {n_test_pairs} test)")
    root = _prepare(root, force)
    ids = [f"{i:03d}" for i in range(2 * n_pairs)]
    pairs = [[ids[2 * i], ids[2 * i + 1]] for i in range(n_pairs)]
    written = []
    for vid in ids:
        p = root / "original_sequences/youtube/c23/videos" / f"{vid}.mp4"
        write_mp4(p, face_video(n_frames, size, int(vid), seed + int(vid)))
        written.append(p)
    for m, method in enumerate(FF_METHODS):
        for a, b in pairs:
            for t, s in ((a, b), (b, a)):
                p = root / "manipulated_sequences" / method / "c23/videos" / f"{t}_{s}.mp4"
                write_mp4(p, face_video(n_frames, size, int(t), seed + int(t), swap=int(s),
                                        blur=0.8 + 0.6 * m, tint=tint))
                written.append(p)
    (root / "splits").mkdir(exist_ok=True)
    n_train = n_pairs - n_val_pairs - n_test_pairs
    cut = {"train": pairs[:n_train], "val": pairs[n_train:n_train + n_val_pairs],
           "test": pairs[n_train + n_val_pairs:]}
    for split, chosen in cut.items():
        (root / "splits" / f"{split}.json").write_text(json.dumps(chosen))
    return written


def make_celebdf(root: str | Path, seed: int = 0, *, n_ids: int = 6, n_frames: int = 24,
                 size: tuple[int, int] = (160, 120), force: bool = False,
                 n_clips: int = 2, tint: float = 1.0) -> list[Path]:
    """Identities id0..id<n_ids-1> in swap pairs (0,1), (2,3), ...; n_clips clips each, one
    fake per clip; one YouTube real; it and the last pair's first clips make the test list."""
    if n_ids < 2 or n_ids % 2:
        raise ValueError(f"n_ids must be even (swap pairs), got {n_ids}")
    root = _prepare(root, force)
    written, test = [], []
    for a in range(n_ids):
        b = a ^ 1  # swap partner
        for clip in range(n_clips):
            vid_seed = seed + 100 * a + clip
            real = root / "Celeb-real" / f"id{a}_{clip:04d}.mp4"
            fake = root / "Celeb-synthesis" / f"id{a}_id{b}_{clip:04d}.mp4"
            write_mp4(real, face_video(n_frames, size, 20 + a, vid_seed))
            write_mp4(fake, face_video(n_frames, size, 20 + a, vid_seed, swap=20 + b, tint=tint))
            written += [real, fake]
            if a >= n_ids - 2 and clip == 0:
                test += [f"1 Celeb-real/{real.name}", f"0 Celeb-synthesis/{fake.name}"]
    youtube = root / "YouTube-real" / "00000.mp4"  # one, in the test list: keeps reals <= fakes
    write_mp4(youtube, face_video(n_frames, size, max(40, 20 + n_ids), seed + 900))
    written.append(youtube)
    test.append("1 YouTube-real/00000.mp4")
    # 1 = REAL in this file; no final newline, like a file saved by hand
    (root / "List_of_testing_videos.txt").write_text("\n".join(test))
    return written


def dfdc_part_dir(root: Path, k: int) -> Path:
    """Part 1 is nested the way some copies of the download are; the others are plain."""
    return root / "dfdc_train_part_01/dfdc_train_part_1" if k == 1 else root / f"dfdc_train_part_{k}"


def make_dfdc(root: str | Path, seed: int = 0, *, n_originals: int = 3, n_frames: int = 30,
              size: tuple[int, int] = (192, 108), force: bool = False,
              n_parts: int = 2, tint: float = 1.0) -> list[Path]:
    """dfdc_train_part_0/ (plain), dfdc_train_part_01/dfdc_train_part_1/ (nested) and, with
    n_parts > 2, dfdc_train_part_<k>/ (plain), each with n_originals reals, n_originals + 1
    fakes and metadata.json. Videos carry audio; part 1's first original (and its fakes) is
    portrait."""
    root = _prepare(root, force)
    fps, written = 29.97, []
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    stride = max(10, n_originals + 2)  # identities of one part never reach the next part's
    for k in range(n_parts):
        folder, meta = dfdc_part_dir(root, k), {}
        for o in range(n_originals):
            ident, vid_seed = 60 + stride * k + o, seed + 500 + stride * k + o
            wh = size[::-1] if (k == 1 and o == 0) else size
            env = mouth_envelope(n_frames, fps, vid_seed)
            audio = speech_audio(env, fps, seed=vid_seed)
            name = "".join(rng.choice(letters, 10)) + ".mp4"
            write_mp4(folder / name, face_video(n_frames, wh, ident, vid_seed, fps=fps, mouth=env),
                      fps=fps, audio=audio)
            meta[name] = {"label": "REAL", "split": "train", "original": None}
            written.append(folder / name)
            for f in range(2 if o == 0 else 1):
                fake = "".join(rng.choice(letters, 10)) + ".mp4"
                other_mouth = mouth_envelope(n_frames, fps, vid_seed + 77 + f)  # out of sync
                frames = face_video(n_frames, wh, ident, vid_seed, swap=ident + 1 + f, fps=fps,
                                    mouth=other_mouth, tint=tint)
                write_mp4(folder / fake, frames, fps=fps, audio=audio)
                meta[fake] = {"label": "FAKE", "split": "train", "original": name}
                written.append(folder / fake)
        (folder / "metadata.json").write_text(json.dumps(meta, indent=1))
    return written


# Tree sizes. "tiny" keeps the test suite fast; "demo" (python -m common.demo) has enough
# videos per split for a validation AUC that means something, a third DFDC part that no
# stage trains on (for the held-out evaluation), and a swap seam clear enough for a small
# network trained from scratch for a few epochs.
SIZES: dict[str, dict[str, dict]] = {
    "tiny": {"faceforensics": {}, "celebdf": {}, "dfdc": {}},
    "smoke": {"faceforensics": {}, "celebdf": {}, "dfdc": {"n_parts": 3}},  # tiny + a held-out part
    "demo": {"faceforensics": {"n_pairs": 12, "n_val_pairs": 2, "n_test_pairs": 2, "tint": 3.0},
             "celebdf": {"n_ids": 12, "n_clips": 3, "tint": 3.0},
             "dfdc": {"n_originals": 20, "n_parts": 3, "tint": 3.0}},
}


def make_all(out: str | Path, seed: int = 0, force: bool = False,
             size: str = "tiny") -> dict[str, list[Path]]:
    """All three trees under out/faceforensics, out/celebdf and out/dfdc, at one of SIZES."""
    if size not in SIZES:
        raise UserError(f"unknown sample size {size!r} (choose from {', '.join(SIZES)})")
    out, kw = Path(out), SIZES[size]
    return {"faceforensics": make_faceforensics(out / "faceforensics", seed, force=force, **kw["faceforensics"]),
            "celebdf": make_celebdf(out / "celebdf", seed, force=force, **kw["celebdf"]),
            "dfdc": make_dfdc(out / "dfdc", seed, force=force, **kw["dfdc"])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m common.sample_data", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="folder to write faceforensics/, celebdf/ and dfdc/ into")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="write into non-empty folders")
    ap.add_argument("--size", choices=tuple(SIZES), default="tiny",
                    help="tiny: a few dozen videos (tests); smoke: tiny plus a third DFDC part; "
                         "demo: a few hundred (python -m common.demo)")
    args = ap.parse_args(argv)
    start = time.time()
    try:
        trees = make_all(args.out, args.seed, args.force, args.size)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, paths in trees.items():
        n_bytes = sum(p.stat().st_size for p in paths)
        print(f"{name:14s} {len(paths):3d} videos  {n_bytes / 1e6:5.2f} MB  -> {Path(args.out) / name}")
    print(f"done in {time.time() - start:.1f} s")
    return 0
