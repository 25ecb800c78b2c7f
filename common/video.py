"""Video probing and frame decoding with PyAV, decoding only the frames that are needed.

Frame indices count presentation order from 0 (the order the decoder hands frames out).
Colour conversion is the expensive part of decoding a frame we do not keep, so frames
between the wanted ones are decoded (they have to be: H.264 frames depend on each other)
but never converted; long gaps are jumped with a seek to the keyframe before the target.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Iterator

import av
import numpy as np

from common.errors import UserError

# A gap longer than this (in seconds) is cheaper to seek over than to decode through.
SEEK_GAP_S = 2.0
_DECODE_ERRORS = (av.error.FFmpegError, OSError, ValueError, EOFError)


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
        container = av.open(path, mode="r")
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


def probe(path: str | os.PathLike) -> VideoInfo:
    """Size, rate and length of a video; raises BadVideoError when it cannot be decoded."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        fps = _rate(stream)
        duration = _stream_duration(container, stream)
        n_frames = int(stream.frames or 0)
        if n_frames <= 0 and duration > 0:
            n_frames = int(round(duration * fps))
        if n_frames <= 0:
            # Neither a frame count nor a duration in the header: count the packets.
            n_frames = sum(1 for p in container.demux(stream) if p.size)
            container.seek(0)
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
        return VideoInfo(n_frames=n_frames, fps=fps, width=width, height=height,
                         duration_s=duration, has_audio=bool(container.streams.audio))
    finally:
        container.close()


def iter_frames(path: str | os.PathLike,
                indices: Iterable[int]) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (index, HxWx3 RGB uint8) for each wanted index, in increasing order.

    Indices past the real end of the video are simply not yielded; a decode error part
    way through (a truncated file) ends the iteration the same way. After a seek the
    position comes from the timestamp ((pts - start) * time_base * fps): exact for the
    constant frame rate of these datasets, approximate for variable-rate files.
    """
    wanted = sorted({int(i) for i in indices if int(i) >= 0})
    if not wanted:
        return
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
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
                container.seek(start_pts + int(target / fps / time_base), stream=stream,
                               backward=True, any_frame=False)
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
                yield target, frame.to_ndarray(format="rgb24")
                k += 1
            cur += 1
    finally:
        container.close()


def read_frames(path: str | os.PathLike, indices: Iterable[int]) -> dict[int, np.ndarray]:
    """{index: HxWx3 RGB uint8} for the wanted indices that exist in the video."""
    return dict(iter_frames(path, indices))


def count_frames(path: str | os.PathLike) -> int:
    """Frames that actually decode (slow: decodes everything); for when headers lie."""
    container = _open(path)
    n = 0
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
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
