"""Video probing and frame decoding with PyAV, decoding only the frames that are needed.

Frame indices count presentation order from 0 (the order the decoder hands frames out).
Colour conversion is the expensive part of decoding a frame we do not keep, so frames
between the wanted ones are decoded (they have to be: H.264 frames depend on each other)
but never converted; long gaps are jumped with a seek to the keyframe before the target.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Iterable, Iterator

import av
import cv2
import numpy as np

from common.errors import UserError

# A gap longer than this (in seconds) is cheaper to seek over than to decode through.
SEEK_GAP_S = 2.0
# Absurd headers are refused before any frame is decoded: a 7 KB file claiming 16000x16000
# would otherwise take gigabytes of memory per worker.
MAX_SIDE = 8192
MAX_DURATION_S = 2 * 3600.0
# av.open already decodes a frame (FFmpeg's stream probing), before any header can be read
# here: the decoder's own pixel limit makes it refuse an oversized frame instead of
# allocating it, so the size check below runs on the headers alone.
_PROBE_OPTIONS = {"max_pixels": str(MAX_SIDE * MAX_SIDE)}
_DECODE_ERRORS = (av.error.FFmpegError, OSError, ValueError, EOFError)
# FFmpeg's decoder threads: "AUTO" (frame and slice threads) cuts one video's latency, but
# costs about a quarter more CPU in all; an extraction worker (one process per core) sets
# "NONE" with single_threaded_decoding().
_THREAD_TYPE = ["AUTO"]


def single_threaded_decoding() -> None:
    """Decode on the calling thread only, from now on in this process (pool workers)."""
    _THREAD_TYPE[0] = "NONE"


def decode_thread_type() -> str:
    """The FFmpeg thread type this process decodes with: "AUTO" or "NONE"."""
    return _THREAD_TYPE[0]


class BadVideoError(UserError):
    """A file that cannot be used as a video: empty, truncated, not a video, no frames."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = " ".join(str(reason).split())  # keep the message on one line
        super().__init__(f"{self.path}: {self.reason}")


@dataclass(frozen=True)
class VideoInfo:
    n_frames: int
    fps: float
    width: int
    height: int
    duration_s: float
    has_audio: bool


def _reason(exc: BaseException) -> str:
    """FFmpeg errors repeat the path in str(exc); strerror alone is the useful part."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text)


def _open(path: str | os.PathLike) -> av.container.InputContainer:
    path = str(path)
    if not os.path.exists(path):
        raise BadVideoError(path, "file not found")
    if os.path.isdir(path):
        raise BadVideoError(path, "is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise BadVideoError(path, "empty file (0 bytes)")
    try:
        container = av.open(path, mode="r", options=_PROBE_OPTIONS)
    except _DECODE_ERRORS as exc:
        raise BadVideoError(path, f"not a readable video ({_reason(exc)})") from None
    if not container.streams.video:
        container.close()
        raise BadVideoError(path, "no video stream")
    return container


def _rate(stream) -> float:
    """Frames per second; average_rate is the container's own figure, the rest are guesses."""
    for rate in (stream.average_rate, getattr(stream, "guessed_rate", None), stream.base_rate):
        if rate:
            value = float(rate)
            if 0.0 < value < 1000.0:
                return value
    return 25.0


def _stream_duration(container, stream) -> float:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000.0  # container duration is in AV_TIME_BASE (µs)
    return 0.0


def _check_limits(path, width: int, height: int, duration_s: float) -> None:
    if max(int(width or 0), int(height or 0)) > MAX_SIDE:
        raise BadVideoError(path, f"frame size {width}x{height} is over the {MAX_SIDE} px limit")
    if duration_s > MAX_DURATION_S:
        raise BadVideoError(path, f"duration {duration_s / 3600:.1f} h is over the "
                                  f"{MAX_DURATION_S / 3600:g} h limit")


def probe(path: str | os.PathLike) -> VideoInfo:
    """Size, rate and length of a video; raises BadVideoError when it cannot be decoded."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        fps = _rate(stream)
        duration = _stream_duration(container, stream)
        _check_limits(path, stream.codec_context.width, stream.codec_context.height, duration)
        n_frames = int(stream.frames or 0)
        if n_frames <= 0 and duration > 0:
            n_frames = int(round(duration * fps))
        if n_frames <= 0:
            # Neither a frame count nor a duration in the header: count the packets.
            try:
                n_frames = sum(1 for p in container.demux(stream) if p.size)
            except _DECODE_ERRORS as exc:
                raise BadVideoError(path, f"unreadable packets ({_reason(exc)})") from None
            # Reopen rather than seek(0): raw streams (e.g. bare H.264) cannot seek back.
            container.close()
            container = _open(path)
            stream = container.streams.video[0]
        width, height = int(stream.codec_context.width), int(stream.codec_context.height)
        # Decode one frame: headers can be fine while the payload is garbage.
        try:
            first = next(iter(container.decode(stream)), None)
        except _DECODE_ERRORS as exc:
            raise BadVideoError(path, f"no decodable frames ({_reason(exc)})") from None
        if first is None or n_frames <= 0:
            raise BadVideoError(path, "no decodable frames")
        width, height = width or first.width, height or first.height
        if duration <= 0:
            duration = n_frames / fps
        _check_limits(path, width, height, duration)
        return VideoInfo(n_frames=n_frames, fps=fps, width=width, height=height,
                         duration_s=duration, has_audio=bool(container.streams.audio))
    finally:
        container.close()


def iter_frames(path: str | os.PathLike,
                indices: Iterable[int]) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (index, HxWx3 RGB uint8) for each wanted index, in increasing order.

    Indices past the real end of the video are simply not yielded; a decode error part
    way through (a truncated file) ends the iteration the same way.
    """
    for idx, frame in iter_decoded(path, indices):
        yield idx, frame.to_ndarray(format="rgb24")


def iter_decoded(path: str | os.PathLike,
                 indices: Iterable[int]) -> Iterator[tuple[int, av.VideoFrame]]:
    """iter_frames without the colour conversion: (index, decoded av.VideoFrame).

    For callers that need only part of a frame (a face crop, the luma plane for
    detection): converting a whole 1080p frame to RGB costs more than decoding it. After
    a seek the position comes from the timestamp ((pts - start) * time_base * fps): exact
    for the constant frame rate of these datasets, approximate for variable-rate files.
    """
    wanted = sorted({int(i) for i in indices if int(i) >= 0})
    if not wanted:
        return
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = _THREAD_TYPE[0]
        fps = _rate(stream)
        time_base = stream.time_base
        start_pts = stream.start_time or 0
        seek_gap = max(1, int(round(SEEK_GAP_S * fps)))
        may_seek = time_base is not None
        frames = container.decode(stream)
        cur: int | None = 0  # index of the next frame the decoder hands out; None = unknown
        k = 0
        sought = -1  # the target of the last seek: one seek per target, so no seek loop
        while k < len(wanted):
            target = wanted[k]
            if may_seek and cur is not None and target - cur > seek_gap and target != sought:
                sought = target
                # backward=True lands on the keyframe at or before the target's timestamp.
                try:
                    container.seek(start_pts + int(target / fps / time_base), stream=stream,
                                   backward=True, any_frame=False)
                except _DECODE_ERRORS:  # a demuxer that cannot seek: decode through instead
                    may_seek = False
                    continue
                frames = container.decode(stream)
                cur = None
            try:
                frame = next(frames)
            except StopIteration:
                break
            except _DECODE_ERRORS:
                break
            if cur is None:
                # After a seek the only way to know where we are is the timestamp.
                if frame.pts is None:
                    cur = target + 1  # forces the restart below
                else:
                    cur = int(round(float((frame.pts - start_pts) * time_base) * fps))
                if cur > target:
                    # The seek overshot (odd keyframe index or timestamps): decode from
                    # the start instead and never seek again in this file.
                    container.seek(0)
                    frames = container.decode(stream)
                    cur, may_seek = 0, False
                    continue
            if cur == target:
                yield target, frame
                k += 1
            cur += 1
    finally:
        container.close()


def read_frames(path: str | os.PathLike, indices: Iterable[int]) -> dict[int, np.ndarray]:
    """{index: HxWx3 RGB uint8} for the wanted indices that exist in the video."""
    return dict(iter_frames(path, indices))


# Formats whose planes are 8-bit Y, U, V with chroma halved both ways: what H.264 and
# the other codecs of these datasets decode to. Other formats take the full-frame path.
_YUV420 = ("yuv420p", "yuvj420p")
# Planar 8-bit YUV formats a rectangle can be cut from (same pixels as the whole frame's
# conversion; 4:2:2 is not: swscale interpolates its chroma across the cut): (x, y) shifts.
# (FF++ c23 files decode to yuv444p: without it every crop converted the whole frame.)
_PLANAR = {"yuv420p": (1, 1), "yuvj420p": (1, 1),
           "yuv444p": (0, 0), "yuvj444p": (0, 0)}


def _plane(plane) -> np.ndarray:
    """A decoded plane as a 2-D uint8 view (rows are line_size long; the padding is cut)."""
    return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:plane.height, :plane.width]


def luma(frame: av.VideoFrame) -> np.ndarray | None:
    """The frame's Y plane as an HxW uint8 view (no copy, no conversion) for 8-bit 4:2:0
    frames, else None. A grayscale image for a face detector, at no cost."""
    if frame.format.name not in _YUV420:
        return None
    return _plane(frame.planes[0])


# Kr, Kb of the colour matrix swscale applies to a frame, by its colorspace (AVColorSpace:
# 1 BT.709; 2 unspecified, 5 BT.470BG, 6 SMPTE 170M: BT.601; 9 BT.2020). Others: swscale.
_KR_KB = {1: (0.2126, 0.0722), 2: (0.299, 0.114), 5: (0.299, 0.114), 6: (0.299, 0.114),
          9: (0.2627, 0.0593)}


@functools.lru_cache(maxsize=None)
def _yuv_matrix(kr: float, kb: float, full_range: bool) -> np.ndarray:
    """3x4 affine matrix (cv2.transform) from 8-bit Y, Cb, Cr to R, G, B."""
    kg = 1.0 - kr - kb
    ys, cs, y0 = (1.0, 1.0, 0.0) if full_range else (255 / 219, 255 / 224, 16.0)
    m = np.array([[ys, 0.0, 2 * (1 - kr) * cs],
                  [ys, -2 * kb * (1 - kb) / kg * cs, -2 * kr * (1 - kr) / kg * cs],
                  [ys, 2 * (1 - kb) * cs, 0.0]])
    return np.hstack([m, (-m @ np.array([y0, 128.0, 128.0]))[:, None]]).astype(np.float32)


def rgb_matrix(frame: av.VideoFrame) -> np.ndarray | None:
    """The YUV -> RGB matrix swscale uses for this frame (its colour space and range: to
    within one level), or None for a colour space it is not known for."""
    k = _KR_KB.get(int(frame.colorspace))
    return None if k is None else _yuv_matrix(*k, int(frame.color_range) == 2)


class RegionConverter:
    """RGB of one rectangle of a decoded frame, converted (and scaled) alone.

    rgb() gives the same pixels as frame.to_ndarray(format="rgb24")[y0:y1, x0:x1] (same
    libswscale conversion, same colour matrix and range, chroma taken from the same
    samples) at the cost of the rectangle instead of the frame; resized() also scales it
    in the same swscale pass. One converter keeps its swscale context between calls.
    """

    def __init__(self) -> None:
        from av.video.reformatter import VideoReformatter

        self._reformatter = VideoReformatter()

    @staticmethod
    def _blocks(frame: av.VideoFrame, x0: int, y0: int, x1: int, y1: int):
        """The rectangle grown to whole chroma blocks (2x2 for 4:2:0: even start and size, so
        each block keeps its own chroma sample and swscale treats it as it treats the frame),
        or None when that is not possible (not planar 8-bit YUV, or past the frame's edge)."""
        if not (0 <= x0 < x1 <= frame.width and 0 <= y0 < y1 <= frame.height):
            raise ValueError(f"region {(x0, y0, x1, y1)} is not inside a "
                             f"{frame.width}x{frame.height} frame")
        shift = _PLANAR.get(frame.format.name)
        if shift is None:
            return None
        mx, my = (1 << shift[0]) - 1, (1 << shift[1]) - 1
        ex0, ey0 = x0 & ~mx, y0 & ~my
        ex1, ey1 = (x1 + mx) & ~mx, (y1 + my) & ~my
        if ex1 > frame.width or ey1 > frame.height:
            return None
        return ex0, ey0, ex1, ey1

    @staticmethod
    def _part(frame: av.VideoFrame, ex0: int, ey0: int, ex1: int, ey1: int) -> av.VideoFrame:
        part = av.VideoFrame(ex1 - ex0, ey1 - ey0, frame.format.name)
        sx, sy = _PLANAR[frame.format.name]
        for k, src in enumerate(frame.planes):
            hx, hy = (0, 0) if k == 0 else (sx, sy)  # chroma planes may be subsampled
            _plane(part.planes[k])[:] = _plane(src)[ey0 >> hy:ey1 >> hy, ex0 >> hx:ex1 >> hx]
        part.colorspace, part.color_range = frame.colorspace, frame.color_range
        return part

    def rgb(self, frame: av.VideoFrame, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """uint8 [y1-y0, x1-x0, 3]; the rectangle must lie inside the frame."""
        blocks = self._blocks(frame, x0, y0, x1, y1)
        if blocks is None:
            return frame.to_ndarray(format="rgb24")[y0:y1, x0:x1]
        ex0, ey0 = blocks[:2]
        rgb = self._reformatter.reformat(self._part(frame, *blocks), format="rgb24").to_ndarray()
        return rgb[y0 - ey0:y1 - ey0, x0 - ex0:x1 - ex0]

    def resized(self, frame: av.VideoFrame, x0: int, y0: int, x1: int, y1: int,
                width: int, height: int) -> np.ndarray | None:
        """uint8 [height, width, 3]: the rectangle converted and scaled in one swscale pass
        (area averaging when shrinking). Odd edges are moved out by one pixel to whole 2x2
        blocks. None when the frame's format or size does not allow it (use rgb())."""
        blocks = self._blocks(frame, x0, y0, x1, y1)
        if blocks is None:
            return None
        part = self._part(frame, *blocks)
        matrix = rgb_matrix(frame)
        if matrix is None:
            return self._reformatter.reformat(part, width=width, height=height, format="rgb24",
                                              interpolation="AREA").to_ndarray()
        # Scaled in YUV, then one SIMD matrix pass: half the time of swscale's rgb24 output.
        yuv = self._reformatter.reformat(part, width=width, height=height, format="yuv444p",
                                         interpolation="AREA", src_color_range=frame.color_range,
                                         dst_color_range=frame.color_range)
        return cv2.transform(cv2.merge([_plane(p) for p in yuv.planes]), matrix)


def count_frames(path: str | os.PathLike) -> int:
    """Frames that actually decode (slow: decodes everything); for when headers lie."""
    container = _open(path)
    n = 0
    try:
        stream = container.streams.video[0]
        stream.thread_type = _THREAD_TYPE[0]
        for _ in container.decode(stream):
            n += 1
    except _DECODE_ERRORS:
        pass
    finally:
        container.close()
    return n


def sample_points(n_frames: int, n_samples: int, clip_len: int) -> list[list[int]]:
    """N runs of clip_len consecutive frame indices spread evenly over the whole video.

    Run starts are evenly spaced from 0 to n_frames - clip_len, so the first run starts
    at frame 0, the last ends at frame n_frames - 1 and the run centres are evenly
    spaced. A video shorter than clip_len repeats its last frame to fill each run.
    Runs may overlap when n_samples * clip_len > n_frames.
    """
    if n_samples < 1 or clip_len < 1:
        raise ValueError(f"need n_samples >= 1 and clip_len >= 1, got {n_samples}, {clip_len}")
    n = max(int(n_frames), 1)
    span = max(n - clip_len, 0)  # last possible start
    if n_samples == 1:
        starts = [span // 2]
    else:
        starts = [int(round(i * span / (n_samples - 1))) for i in range(n_samples)]
    return [[min(s + j, n - 1) for j in range(clip_len)] for s in starts]
