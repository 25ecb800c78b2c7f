"""A run of consecutive face crops coded as one short H.264 stream (the face view's codec).

Consecutive frames of a run are nearly alike, so coding them as video takes about half the
bytes of per-frame JPEG at the same PSNR (README, "Format (version 5)"). Choices:
  centre first   frames are coded in the order c, c+1, .., T-1, c-1, .., 0 (c = T // 2), the
                 centre an IDR frame: a single-frame model (RR) reads the run's centre frame
                 (data.samples.clip_start) and decodes one frame, not c + 1
  B-frames       3 between P-frames, fixed (no adaptive placement, no pyramid): ~14 % fewer
                 bytes at the same PSNR; payloads are stored in decode order, and a reader
                 decodes the first payload alone (the centre frame, IDR) or the whole run
  fastdecode     no CABAC and no deblocking: a clip decodes in ~60 % of the time, for ~15 %
                 more bytes
  psnr           no adaptive quantisation or psycho-visual tuning: bits go where the error
                 is, not where an eye would look (CRF 14 with it: ~15 % fewer bytes than
                 CRF 12 without, at the same PSNR)
  superfast      40 % less encoding time than `veryfast` (0.19 s against 0.32 s per video
                 at the defaults), ~10 % more bytes: extraction stays within 2x its decode
  one thread     deterministic output, and a pool worker is one process per core already
  colour         OpenCV's RGB <-> I420 on both sides (swscale's YUV -> RGB took 3x as long); an
                 odd side is padded by one edge pixel for 4:2:0, and cut after decoding
  no SEI         x264 writes its settings as text into every stream (~0.7 kB a run): dropped
Payloads are Annex B; the first carries the stream's SPS and PPS.
"""
from __future__ import annotations

import re
from fractions import Fraction

import numpy as np

PRESET, TUNE = "superfast", "psnr,fastdecode"
GOP = "bframes=3:b-adapt=0:b-pyramid=none"  # a fixed pattern of B-frames: 14 % fewer bytes
_START = re.compile(b"\x00\x00\x01")


def require_encoder() -> None:
    """A one-line UserError when this PyAV build has no libx264 (PyAV's own wheels have it;
    an FFmpeg built without GPL parts does not): checked before any extraction starts."""
    import av

    from common.errors import UserError

    if "libx264" not in av.codecs_available:
        raise UserError(f"PyAV {av.__version__} here has no libx264 encoder, which the face cache "
                        "codes the face view with; install PyAV's own wheel (pip install --force-reinstall av)")


def coding_order(t: int) -> list[int]:
    """Frame indices of a run of t in the order they are coded: centre first."""
    c = t // 2
    return list(range(c, t)) + list(range(c - 1, -1, -1))


def encode_run(frames: np.ndarray, crf: int) -> list[bytes]:
    """uint8 [T, H, W, 3] RGB -> T payloads in decode order: the first is frame T // 2 (an IDR
    frame), and the decoder shows them in coding_order."""
    import av
    import cv2

    t, h, w = frames.shape[:3]
    ph, pw = h + h % 2, w + w % 2
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = pw, ph, "yuv420p", Fraction(1, 25)
    # (bframes and keyint are x264's own options: as AVOptions they would be ignored)
    ctx.options = {"crf": str(crf), "preset": PRESET, "tune": TUNE, "threads": "1",
                   "x264-params": f"keyint={max(t, 1)}:scenecut=0:rc-lookahead=0:{GOP}"}
    out: list[bytes] = []
    for pts, i in enumerate(coding_order(t)):
        rgb = frames[i]
        if (ph, pw) != (h, w):
            rgb = np.pad(rgb, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YUV_I420),
                                           format="yuv420p")
        frame.pts = pts
        out += [bytes(p) for p in ctx.encode(frame)]
    out += [bytes(p) for p in ctx.encode(None)]
    if len(out) != t:
        raise ValueError(f"x264 gave {len(out)} packets for {t} frames")
    out[0] = drop_sei(out[0])
    return out


def drop_sei(payload: bytes) -> bytes:
    """An Annex B payload without its SEI NAL units (type 6). Start codes cannot occur inside a
    NAL unit (emulation prevention), so splitting on them is safe."""
    starts = [m.start() for m in _START.finditer(payload)]
    keep, bounds = [], starts + [len(payload)]
    for a, b in zip(bounds, bounds[1:]):
        if a + 3 < len(payload) and payload[a + 3] & 0x1F == 6:
            continue
        keep.append(payload[a:b])
    return payload[:starts[0]] + b"".join(keep) if starts else payload


def payloads_needed(t: int, wanted: range) -> int:
    """Payloads of a run of t a read of frames `wanted` decodes: the first alone for the run's
    centre frame, else all (B-frames make any other prefix's frames depend on later payloads)."""
    return 1 if list(wanted) == [t // 2] else t


def decode_run(payloads: list[bytes], t: int, wanted: range, side: int | None = None,
               out: np.ndarray | None = None) -> np.ndarray:
    """Frames `wanted` (indices into the run of t) of a run coded by encode_run, as uint8
    [len(wanted), S, S, 3] RGB (into `out` when given; cut to side x side when given, else
    as coded). `payloads`: the run's first payloads_needed(t, wanted). Raises ValueError when
    they do not decode to those frames."""
    import av
    import cv2

    order = coding_order(t)
    need = payloads_needed(t, wanted)
    ctx = av.CodecContext.create("h264", "r")
    ctx.thread_count = 1
    pictures = []  # shown in coding order
    try:
        for data in payloads[:need]:
            pictures += ctx.decode(av.Packet(data))
        pictures += ctx.decode(None)
    except av.error.FFmpegError as exc:
        raise ValueError(f"the H.264 run does not decode ({exc})") from None
    if len(payloads) < need or len(pictures) != need:
        raise ValueError(f"the H.264 run gave {len(pictures)} of {need} frames")
    coded = pictures[0].height
    side = side or coded
    if out is None:
        out = np.empty((len(wanted), side, side, 3), np.uint8)
    if coded - side not in (0, 1) or out.shape[1:] != (side, side, 3):
        raise ValueError(f"the H.264 run holds frames of {coded} px, expected {out.shape[1]}")
    for n, i in enumerate(wanted):
        yuv = pictures[order.index(i)].to_ndarray()
        if coded == side and out[n].flags.c_contiguous:  # straight into the batch's buffer
            cv2.cvtColor(yuv, cv2.COLOR_YUV2RGB_I420, dst=out[n])
        else:
            out[n] = cv2.cvtColor(yuv, cv2.COLOR_YUV2RGB_I420)[:side, :side]
    return out
