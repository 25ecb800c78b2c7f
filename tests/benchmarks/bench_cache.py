"""The face cache on disk: bytes per video against the source, the views' fidelity, the
extraction's wall against CPU time, and what decoding costs per training sample.

    python -m tests.benchmarks.bench_cache [--rounds 2] [--face-model PATH]
    python -m tests.benchmarks.bench_cache --no-real --synthetic 0 --video X.mp4   # your files

At the defaults (224 px, 32 sample points, runs of 8, every stored view, YuNet), per video:
the real videos under $DEEPFAKE_REALDATA_DIR (skipped where unset),
a synthetic 1080p 10 s video (common.sample_data's face video, "DFDC-like" in size and length;
its source bytes depend on how well the generator's picture compresses), and --video files.
  bytes           the entry's files (views, mel, json) as common.faces.cache writes them
  cache_vs_source those bytes / the video file's bytes
  psnr_db         each view decoded from the cache against the raw crops of the same video
                  (video_views): the lossy views' fidelity; native must be bit-exact
  wall_vs_cpu     build_face_cache (one video, in this process, into a fresh folder each
                  round) wall / CPU seconds: > 1 is time spent waiting (the disk, or other
                  processes on a shared machine)
  vs_decode_cpu   its CPU seconds / those of PyAV decoding every frame (the floor)
  decode_ms       CPU ms per training sample read through FaceSamples (check + decode +
                  collate): a frame of each view, and a clip of the face view
Targets: cache_vs_source <= 1.0 on the synthetic 1080p video, <= 5 MB per video, wall <= 1.2x
CPU (an idle machine), extraction CPU <= 2x decode, PSNR >= 40 dB on the real videos.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from tests.benchmarks import _shared as S  # noqa: E402

TARGETS = {"cache_vs_source_synthetic_1080p_max": 1.0, "bytes_per_video_max": 5e6,
           "wall_vs_cpu_max": 1.2, "vs_decode_cpu_max": 2.0, "psnr_db_min": 40.0}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def decode_ms(cache, rec, n: int) -> dict:
    """CPU ms per sample of each read a model makes, one thread, in this process."""
    import cv2

    from common.data.samples import FaceSamples, collate_samples
    from common.preprocess import ClipTransform

    cv2.setNumThreads(1)
    out = {}
    reads = [(f"frame/{v}", v, 1, False) for v in cache.views] + [("clip/face", "face", cache.clip_len, False)]
    if rec.has_audio:
        reads.append(("clip/face+mel", "face", cache.clip_len, True))
    for name, view, clip, audio in reads:
        ds = FaceSamples([rec], cache, clip_len=clip, view=view, with_audio=audio,
                         transform=ClipTransform(cache.crop_size, preprocessing="none", normalize=False))
        keys = [i % len(ds) for i in range(n)]
        c0 = time.process_time()
        for b in range(0, n, 16):  # as a loader worker asks: a batch's items together
            collate_samples(ds.__getitems__(keys[b:b + 16]))
        out[name] = 1e3 * (time.process_time() - c0) / n
    return out


def measure(path: Path, kind: str, args, detector) -> dict:
    """One video: extraction timed against its decode floor, then the entry's bytes,
    fidelity and read cost."""
    from common.faces.cache import FaceCache
    from common.faces.extraction import build_face_cache, video_views
    from common.faces.video import probe
    from tests.benchmarks.bench_extraction import decode_all

    info = probe(str(path))
    rec = SimpleNamespace(path=str(path), rel=f"bench/{path.name}", label=0, has_audio=info.has_audio,
                          source=None, split="train")
    tmp = tempfile.TemporaryDirectory(prefix="bench_cache_", dir=args.work_dir)
    rounds = {"n": 0}

    def extract():
        rounds["n"] += 1  # a fresh folder every round: each one really writes its entry
        cache = FaceCache(Path(tmp.name) / str(rounds["n"]), "bench", args.image_size,
                          args.frames_per_video, args.clip_len, "yunet", args.preprocessing)
        s = build_face_cache([rec], cache, workers=0, progress=False, preview=False,
                             face_model=args.face_model)
        assert s["done"] == 1, s
        return cache

    extract()  # warm-up (and proof that the video gives an entry)
    res = S.interleaved({"decode": lambda: decode_all(str(path)), "extract": extract}, args.rounds)
    cache = res["extract"]["result"][-1]
    files = [p for p in cache.dir.iterdir() if p.name.startswith("bench__") and not p.name.endswith(".lock")]
    entry_bytes = sum(p.stat().st_size for p in files)
    raw, _ = video_views(str(path), cache.frames_per_video, cache.clip_len, cache.crop_size,
                         detector, info, cache.views)
    if args.preprocessing != "none":  # as extract_video: the stage's filter, then the codec
        from common.preprocess import apply_preprocessing

        raw = {v: apply_preprocessing(c.reshape(-1, *c.shape[2:]), args.preprocessing).reshape(c.shape)
               for v, c in raw.items()}
    stored = {v: cache.entry(rec.rel, v)[0] for v in cache.views}
    out = {"video": path.name, "kind": kind, "size": f"{info.width}x{info.height}",
           "n_frames": info.n_frames, "audio": info.has_audio, "source_bytes": path.stat().st_size,
           "bytes": entry_bytes, "cache_vs_source": entry_bytes / path.stat().st_size,
           "bytes_by_file": {p.name.split(".", 1)[1]: p.stat().st_size for p in files},
           "psnr_db": {v: psnr(stored[v], raw[v]) for v in cache.views},
           "native_bit_exact": bool(np.array_equal(stored["native"], raw["native"])),
           "wall_vs_cpu": S.paired_ratio(res["extract"]["wall"], res["extract"]["cpu"]),
           "vs_decode_cpu": S.paired_ratio(res["extract"]["cpu"], res["decode"]["cpu"]),
           "extract_cpu_s": S.median(res["extract"]["cpu"]),
           "decode_ms": decode_ms(cache, rec, args.samples)}
    tmp.cleanup()
    return out


def inputs(args) -> list[tuple[Path, str]]:
    videos = [(Path(v), "given") for v in args.video]
    real = None if args.no_real else S.realdata_dir()
    if real is not None:
        videos += [(p, "real") for p in sorted(real.rglob("*.mp4"))]
    videos += [(S.ensure_video(args.video_dir, i, args.width, args.height, args.seconds, args.fps,
                               args.face_px), "synthetic") for i in range(args.synthetic)]
    return videos


def summarise(per_video: list[dict], kind: str) -> dict | None:
    mine = [v for v in per_video if v["kind"] == kind]
    if not mine:
        return None
    return {"videos": len(mine), "bytes_per_video": S.median([v["bytes"] for v in mine]),
            "bytes_per_video_mean": float(np.mean([v["bytes"] for v in mine])),
            "cache_vs_source": sum(v["bytes"] for v in mine) / sum(v["source_bytes"] for v in mine),
            "psnr_db_min": {view: min(v["psnr_db"][view] for v in mine) for view in mine[0]["psnr_db"]},
            "native_bit_exact": all(v["native_bit_exact"] for v in mine)}


def run(args) -> dict:
    import cv2

    from common.faces.detectors import make_detector
    from common.faces.video import single_threaded_decoding

    cv2.setNumThreads(1)  # as an extraction worker
    single_threaded_decoding()
    detector = make_detector("yunet", args.face_model)
    per_video = [measure(p, kind, args, detector) for p, kind in inputs(args)]
    sets = {k: summarise(per_video, k) for k in ("real", "synthetic", "given")}
    figures = {k: v for k, v in sets.items() if v is not None}
    figures["wall_vs_cpu"] = S.median([v["wall_vs_cpu"] for v in per_video])
    figures["vs_decode_cpu"] = S.median([v["vs_decode_cpu"] for v in per_video])
    figures["decode_ms_per_sample"] = {k: S.median([v["decode_ms"][k] for v in per_video if k in v["decode_ms"]])
                                       for k in per_video[0]["decode_ms"]}
    return S.rounded({
        "benchmark": "cache",
        "figures": figures,
        "targets": TARGETS,
        "pass": verdict(figures),
        "videos": per_video,
        "conditions": S.conditions(
            image_size=args.image_size, frames_per_video=args.frames_per_video,
            preprocessing=args.preprocessing,
            clip_len=args.clip_len, rounds=args.rounds, samples=args.samples,
            synthetic=f"{args.synthetic} x {args.width}x{args.height} H.264 yuv420p, "
                      f"{args.seconds:g} s at {args.fps:g} fps (common.sample_data face video)",
            notes="one extraction in this process (one decoder thread, one OpenCV thread, as a "
                  "pool worker); ratios are medians of same-round ratios; bytes include the json; "
                  "wall_vs_cpu above 1 on a machine shared with other jobs counts their time too")})


def verdict(figures: dict) -> dict:
    out = {"wall_vs_cpu": figures["wall_vs_cpu"] <= TARGETS["wall_vs_cpu_max"],
           "vs_decode_cpu": figures["vs_decode_cpu"] <= TARGETS["vs_decode_cpu_max"]}
    for kind in ("real", "synthetic", "given"):
        if kind in figures:
            out[f"bytes_per_video_{kind}"] = figures[kind]["bytes_per_video"] <= TARGETS["bytes_per_video_max"]
            out[f"native_bit_exact_{kind}"] = figures[kind]["native_bit_exact"]
    if "synthetic" in figures:
        out["cache_vs_source_synthetic"] = (figures["synthetic"]["cache_vs_source"]
                                            <= TARGETS["cache_vs_source_synthetic_1080p_max"])
    if "real" in figures:
        out["psnr_real"] = bool(min(figures["real"]["psnr_db_min"].values()) >= TARGETS["psnr_db_min"])
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_cache",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--video-dir", default=S.DEFAULT_VIDEO_DIR,
                    help="where the synthetic videos are made once and reused")
    ap.add_argument("--work-dir", default=None, help="where the caches are written (default: $TMPDIR)")
    ap.add_argument("--synthetic", type=int, default=1, help="synthetic videos to measure")
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--face-px", type=int, default=None, help="face size (default 0.3 x height)")
    ap.add_argument("--no-real", action="store_true", help="skip the real videos")
    ap.add_argument("--video", action="append", default=[], help="a video file to measure (repeatable)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--frames-per-video", type=int, default=32)
    ap.add_argument("--clip-len", type=int, default=8)
    ap.add_argument("--preprocessing", default="none", choices=("none", "clahe", "clahe_bilateral"),
                    help="the cache's stage filter (FF++ none, Celeb-DF clahe, DFDC clahe_bilateral)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--samples", type=int, default=64, help="samples timed per kind of read")
    ap.add_argument("--face-model", default=None, help="YuNet ONNX (default: the model cache)")
    return ap


def main(argv: list[str] | None = None) -> dict:
    return S.emit(run(parser().parse_args(argv)))


if __name__ == "__main__":
    main()
