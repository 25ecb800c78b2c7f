"""Face-cache extraction against decoding alone (the floor) and against a naive pipeline.

    python -m tests.benchmarks.bench_extraction [--videos 1] [--rounds 3] [--seconds 10]
    python -m tests.benchmarks.bench_extraction --video REAL_1080P.mp4   # a real file

Per video and round, side by side, order rotating:
  decode         PyAV decodes every frame, converts none (what no extractor can beat)
  extract_yunet  common.faces.extraction.extract_video with YuNet (the default detector): the real
                 cache entry (N x T crops, boxes, json), the face detected on a frame the
                 decoder has already shrunk to --detect-max-side, at the key points
                 (boxes interpolated in between where neighbours agree: crops.key_points)
  extract_haar   the same with the Haar cascade (an explicit choice)
  face_only      extract_yunet storing the face view alone (before views): the cost of the
                 context and native views is extract_yunet / face_only
  naive          decode every frame, convert it to RGB, Haar on the full-resolution frame,
                 crop; timed on the first --naive-frames frames and scaled to the whole video
Both decode with the same decoder threads: none, as the extraction pool's workers (one
process per core) do, or auto (--decode-threads), as one process alone does.
Targets: extract_yunet <= 2x decode in CPU time; naive >= 5x extract_yunet.
Inputs: --video files, else common.sample_data face videos made once under --video-dir.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks import _shared as S  # noqa: E402

TARGET_VS_DECODE = 2.0
TARGET_NAIVE_SPEEDUP = 5.0
DFDC_VIDEOS = 120_000


def decode_all(path: str) -> int:
    """The floor: demux and decode every frame (decoder threads as common.faces.video uses them)."""
    import av

    from common.faces import video

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = video.decode_thread_type()
        return sum(1 for _ in container.decode(stream))


def naive(path: str, n_first: int, detector, size: int) -> int:
    """Decode, convert to RGB and detect on every frame at full resolution, crop the face."""
    import av

    from common.faces import video
    from common.faces.detectors import crop_box, face_box

    done = 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = video.decode_thread_type()
        for frame in container.decode(stream):
            rgb = frame.to_ndarray(format="rgb24")
            box = face_box(rgb, detector)
            crop_box(rgb, box or (0, 0, size, size), size)
            done += 1
            if done >= n_first:
                break
    return max(done, 1)


def breakdown(path: str, cache, detector) -> dict:
    """One instrumented extraction (video_views): where the time goes. detect_s and crop_s
    are timed around the detector and the cropper; the rest is decoding and bookkeeping."""
    import time

    from common.faces import crops as C
    from common.faces.extraction import video_views

    t = {"total_s": 0.0, "detect_s": 0.0, "crop_s": 0.0, "detections": 0}

    def timed(fn, key, count=None):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                t[key] += time.perf_counter() - t0
                if count:
                    t[count] += 1
        return wrapper

    saved = {name: getattr(C.Cropper, name) for name in ("box", "crop", "native")}
    C.Cropper.box = timed(saved["box"], "detect_s", "detections")
    C.Cropper.crop = timed(saved["crop"], "crop_s")
    C.Cropper.native = timed(saved["native"], "crop_s")
    try:
        t0 = time.perf_counter()
        _, meta = video_views(path, cache.frames_per_video, cache.clip_len, cache.crop_size,
                              detector, views=cache.views)
        t["total_s"] = time.perf_counter() - t0
    finally:
        for name, fn in saved.items():
            setattr(C.Cropper, name, fn)
    t["rest_s"] = t["total_s"] - t["detect_s"] - t["crop_s"]
    t.update(points=meta["points"], interpolated=meta["box_source"].count("interpolated"))
    return t


def run(args) -> dict:
    import cv2

    from common.faces.extraction import extract_video
    from common.faces.cache import FaceCache
    from common.faces.detectors import HaarDetector, make_detector
    from common.faces.video import probe, single_threaded_decoding

    cv2.setNumThreads(args.cv2_threads)  # the extraction workers run with one OpenCV thread
    if args.decode_threads == "none":  # as the pool's workers decode
        single_threaded_decoding()
    videos = [Path(v) for v in args.video] or [
        S.ensure_video(args.video_dir, i, args.width, args.height, args.seconds, args.fps,
                       args.face_px) for i in range(args.videos)]
    detectors = {"yunet": make_detector("yunet", args.face_model, max_side=args.detect_max_side),
                 "haar": make_detector("haar", max_side=args.detect_max_side)}
    full_res = HaarDetector(max_side=0)  # the naive pipeline: no downscaling
    tmp = tempfile.TemporaryDirectory(prefix="bench_extract_")
    caches = {name: FaceCache(tmp.name, "bench", args.image_size, args.frames_per_video,
                              args.clip_len, name) for name in detectors}
    face_only = FaceCache(tmp.name, "bench_face", args.image_size, args.frames_per_video,
                          args.clip_len, "yunet", views=("face",))
    per_video = []
    for k, path in enumerate(videos):
        info = probe(path)
        real = SimpleNamespace(path=str(path), rel=f"bench/{path.name}", label=0,
                               has_audio=False, source=None)
        for name, det in detectors.items():  # warm-up (and proof that a face is found)
            extract_video(real, caches[name], det, decode_audio=False)
        fns = {"decode": lambda p=str(path): decode_all(p)}
        for name, det in detectors.items():
            fns[f"extract_{name}"] = lambda r=real, c=caches[name], d=det: extract_video(
                r, c, d, decode_audio=False)
        fns["face_only"] = lambda r=real, d=detectors["yunet"]: extract_video(r, face_only, d,
                                                                               decode_audio=False)
        fns["naive"] = lambda p=str(path): naive(p, args.naive_frames, full_res, args.image_size)
        res = S.interleaved(fns, args.rounds)
        scale = info.n_frames / res["naive"]["result"][0]
        wall = {name: r["wall"] for name, r in res.items()}
        cpu = {name: r["cpu"] for name, r in res.items()}
        for d in (wall, cpu):
            d["naive"] = [x * scale for x in d["naive"]]
        entry = {"video": path.name, "n_frames": info.n_frames, "size": f"{info.width}x{info.height}",
                 "seconds_median": {name: S.median(v) for name, v in wall.items()},
                 "cpu_seconds_median": {name: S.median(v) for name, v in cpu.items()}}
        for name in detectors:
            entry[f"{name}_vs_decode"] = S.paired_ratio(wall[f"extract_{name}"], wall["decode"])
            entry[f"{name}_vs_decode_cpu"] = S.paired_ratio(cpu[f"extract_{name}"], cpu["decode"])
        entry["naive_vs_yunet"] = S.paired_ratio(wall["naive"], wall["extract_yunet"])
        entry["views_vs_face_only_cpu"] = S.paired_ratio(cpu["extract_yunet"], cpu["face_only"])
        entry["naive_vs_yunet_cpu"] = S.paired_ratio(cpu["naive"], cpu["extract_yunet"])
        if k == 0 and not args.no_breakdown:
            entry["breakdown_s"] = {name: breakdown(str(path), caches[name], det)
                                    for name, det in detectors.items()}
        per_video.append(entry)
    tmp.cleanup()

    def med(key: str) -> float:
        return S.median([v[key] for v in per_video])

    figures = {key: med(key) for key in (
        "yunet_vs_decode_cpu", "yunet_vs_decode", "haar_vs_decode_cpu", "haar_vs_decode",
        "naive_vs_yunet", "naive_vs_yunet_cpu", "views_vs_face_only_cpu")}
    cpu_yunet = S.median([v["cpu_seconds_median"]["extract_yunet"] for v in per_video])
    figures["videos_per_hour_per_core_yunet"] = 3600.0 / cpu_yunet
    figures["core_hours_for_120k_dfdc_videos_yunet"] = DFDC_VIDEOS * cpu_yunet / 3600.0
    return S.rounded({
        "benchmark": "extraction",
        "figures": figures,
        "targets": {"yunet_vs_decode_cpu_max": TARGET_VS_DECODE,
                    "naive_vs_extract_min": TARGET_NAIVE_SPEEDUP},
        "pass": {"yunet_vs_decode_cpu": figures["yunet_vs_decode_cpu"] <= TARGET_VS_DECODE,
                 "naive_vs_yunet": figures["naive_vs_yunet"] >= TARGET_NAIVE_SPEEDUP},
        "videos": per_video,
        "conditions": S.conditions(
            frames_per_video=args.frames_per_video, clip_len=args.clip_len,
            image_size=args.image_size, detect_max_side=args.detect_max_side,
            video=(", ".join(str(v) for v in args.video) if args.video else
                   f"{args.width}x{args.height} H.264 yuv420p, {args.seconds:g} s at "
                   f"{args.fps:g} fps, a face in frame"),
            audio="off (video path only)", rounds=args.rounds, naive_frames=args.naive_frames,
            cv2_threads_set=args.cv2_threads, decoder_threads=args.decode_threads,
            notes="ratios: median over rounds of paired (same-round) ratios; *_cpu: CPU time of "
                  "the process (all threads); videos_per_hour_per_core = 3600 / CPU seconds "
                  "per video; every video is detected on its own frames (no box reuse "
                  "across videos; within one, boxes between agreeing key points are interpolated)"),
    })


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_extraction",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--video-dir", default=S.DEFAULT_VIDEO_DIR,
                    help="where the synthetic videos are made once and reused")
    ap.add_argument("--videos", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--face-px", type=int, default=None, help="face size (default 0.3 x height)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--frames-per-video", type=int, default=32)
    ap.add_argument("--clip-len", type=int, default=8)
    ap.add_argument("--video", action="append", default=[],
                    help="a real video file to measure (repeatable); default: synthetic videos")
    ap.add_argument("--face-model", default=None, help="YuNet ONNX (default: the model cache)")
    ap.add_argument("--detect-max-side", type=int, default=640)
    ap.add_argument("--naive-frames", type=int, default=6,
                    help="frames the naive pipeline is timed on (then scaled to the video)")
    ap.add_argument("--cv2-threads", type=int, default=1)
    ap.add_argument("--decode-threads", choices=("none", "auto"), default="none",
                    help="FFmpeg decoder threads, for the floor and the extraction alike: none "
                         "as the extraction pool's workers decode, auto as one process alone")
    ap.add_argument("--no-breakdown", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> dict:
    return S.emit(run(parser().parse_args(argv)))


if __name__ == "__main__":
    main()
