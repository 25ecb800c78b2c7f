"""How the face cache stores pixels: one codec per view, payloads packed in a checked container.

Chosen by measurement (README, "Format (version 5)"; tests/benchmarks/bench_cache.py) on the
crops of the real FF++ videos at the defaults (224 px, 32 points, runs of 8):
  face     each run of T frames one short H.264 stream (common/faces/h264.py), CRF 14, 4:2:0:
           0.77-0.96 MB per video at 40.9-42.3 dB against the raw crop (format 4's JPEG,
           quality 83 frame by frame, took 1.86 MB for 41.3 dB, and 80 fell below 40 dB;
           lossless PNG 15 MB; raw 38.5 MB). Read cost: a clip of 8 2.0 ms (JPEG 2.2), a
           run's centre frame, all RR reads, 0.62 ms (JPEG 0.39)
  context  JPEG quality 95, one frame per point: 0.50 MB; 42.0-44.6 dB per video, 41.0 dB worst
           frame (the scene holds more fine detail than a face: quality 85 gave 38 dB there)
  native   lossless WebP (Pillow, method 0): bit-exact, CM reads the codec's own 8-px grid;
           1.63 MB (PNG 1.94 MB; WebP's slowest method 1.46 MB at 18x the encode time)
  mel      the log-mel as float16 (its shape, then its bytes): 0.13 MB per 10 s
A stage's CLAHE, applied before encoding (Celeb-DF's cache), sharpens local contrast: the face
view then needs CRF 9 for 40 dB (40.3 dB on the worst video; CRF 10 gave 40.0); DFDC's
CLAHE + bilateral filter keeps 14 (40.2 dB). Such caches are larger (PREPROCESSING_GROWTH).
The context and native views are stored a frame per payload, the face view a frame per
payload in each run's decode order: a sample reads and decodes only (part of) its own run.

Container (<key>.<view>.frames, <key>.mel.bin): MAGIC, u32 count, count x (u32 length, u32
crc32), then the payloads back to back. The per-payload crc32 catches a corrupt frame where
it is read; the header's lengths must add up to the file's size, which catches truncation.
"""
from __future__ import annotations

import io
import struct
import zlib
from typing import Sequence

import numpy as np

from common.faces import h264

MAGIC = b"DFC1"
_HEAD = struct.Struct("<4sI")
_ITEM = struct.Struct("<II")
VIEW_CODECS = {"face": ("h264", 14), "context": ("jpeg", 95), "native": ("webp_lossless", 0)}
QUALITY_WITH = {("face", "clahe"): 9}  # (view, preprocessing) -> quality (CRF for H.264), where it differs
# Measured bytes per stored pixel at the defaults (the real FF++ videos' largest entries),
# with ~10 % headroom: the disk estimate printed before extraction (estimate_entry_bytes).
BYTES_PER_PIXEL = {"face": 0.083, "context": 0.34, "native": 1.15}
MEL_BYTES_PER_S = 13_000  # 64 mels x 100 frames/s x float16, + header
# Bytes of a preprocessed cache over a plain one, measured on the real FF++ videos at the
# defaults (medians, each at its own CRF): CLAHE 5.21 MB against 2.98 MB plain (x 1.75);
# CLAHE + bilateral 3.50 MB (x 1.18; the synthetic 1080p video: 3.14 against 2.24 MB).
PREPROCESSING_GROWTH = {"none": 1.0, "clahe": 1.75, "clahe_bilateral": 1.2}


class DamagedEntryError(OSError):
    """A cache file does not match what its entry recorded (truncated or corrupt)."""


def codec_of(view: str, preprocessing: str = "none") -> tuple[str, int]:
    """(codec, quality) of a view in a cache with this preprocessing."""
    kind, quality = VIEW_CODECS[view]
    return kind, QUALITY_WITH.get((view, preprocessing), quality)


def encode_frame(frame: np.ndarray, view: str, preprocessing: str = "none") -> bytes:
    """One uint8 [S, S, 3] RGB frame in its view's codec (a view coded frame by frame)."""
    kind, quality = codec_of(view, preprocessing)
    if kind == "h264":
        raise ValueError(f"the {view} view is coded a run at a time (encode_view)")
    if kind == "webp_lossless":  # Pillow: OpenCV cannot choose WebP's (fastest) method 0
        from PIL import Image

        out = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(frame)).save(out, "WEBP", lossless=True, method=0,
                                                          quality=quality)
        return out.getvalue()
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_OPTIMIZE, 1])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def decode_frame(data: bytes, view: str) -> np.ndarray:
    """The inverse of encode_frame: uint8 [S, S, 3] RGB. The one decoder every reader uses
    (OpenCV for both codecs; decoding straight to RGB halves a JPEG frame's cost against
    decoding to BGR and swapping the channels after)."""
    import cv2

    rgb = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.10
    buf = np.frombuffer(data, np.uint8)
    img = cv2.imdecode(buf, rgb) if rgb is not None else cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        raise DamagedEntryError("a frame does not decode")
    return img if rgb is not None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def pack(payloads: Sequence[bytes]) -> bytes:
    """The container of these payloads (header with lengths and crc32s, then the payloads)."""
    head = _HEAD.pack(MAGIC, len(payloads))
    items = b"".join(_ITEM.pack(len(p), zlib.crc32(p)) for p in payloads)
    return head + items + b"".join(payloads)


def encode_view(crops: np.ndarray, view: str, preprocessing: str = "none") -> bytes:
    """uint8 [K, T, S, S, 3] -> container bytes, K x T payloads in point order; within a
    point, frame t for a per-frame codec, the run's decode order for H.264 (h264.encode_run)."""
    kind, quality = codec_of(view, preprocessing)
    if kind == "h264":
        return pack([p for run in crops for p in h264.encode_run(run, quality)])
    return pack([encode_frame(f, view, preprocessing) for f in crops.reshape(-1, *crops.shape[-3:])])


def round_trip(crops: np.ndarray, view: str, preprocessing: str = "none") -> np.ndarray:
    """uint8 [K, T, S, S, 3] as the cache gives them back: encoded and decoded (what every
    reader sees; tests and benchmarks compare with it)."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".frames") as f:
        f.write(encode_view(crops, view, preprocessing))
        f.flush()
        k, t = crops.shape[:2]
        return np.stack([read_frames(f.name, view, point, t, 0, t, side=crops.shape[-2])
                         for point in range(k)])


def encode_array(arr: np.ndarray) -> bytes:
    """A 2-D array (the log-mel, values in [-1, 1]) as a one-payload container: its two
    dimensions (u32 each), then its C-order bytes as float16 (steps of at most 2^-11 there,
    0.02 dB of the mel; half the bytes of float32)."""
    arr = np.ascontiguousarray(arr, dtype="<f2")
    return pack([struct.pack("<II", *arr.shape) + arr.tobytes()])


def read_payloads(path, first: int, count: int) -> list[bytes]:
    """Payloads first .. first+count-1 of a container file, each checked against its crc32,
    with one seek and one read for the run. Raises DamagedEntryError naming what is wrong."""
    with open(path, "rb", buffering=0) as f:
        head = f.read(_HEAD.size)
        if len(head) < _HEAD.size or _HEAD.unpack(head)[0] != MAGIC:
            raise DamagedEntryError(f"{path}: not a cache container (bad header)")
        n = _HEAD.unpack(head)[1]
        table = f.read(n * _ITEM.size)
        if len(table) != n * _ITEM.size or first + count > n:
            raise DamagedEntryError(f"{path}: truncated header or frame {first + count - 1} of {n} absent")
        items = np.frombuffer(table, dtype="<u4").reshape(n, 2)  # (length, crc32) per payload
        lengths = items[first:first + count, 0].tolist()
        f.seek(_HEAD.size + len(table) + int(items[:first, 0].sum(dtype=np.int64)))
        blob = f.read(sum(lengths))
    if len(blob) != sum(lengths):
        raise DamagedEntryError(f"{path}: truncated (frames {first}..{first + count - 1})")
    out, pos = [], 0
    for length, crc in zip(lengths, items[first:first + count, 1].tolist()):
        part = blob[pos:pos + length]
        if zlib.crc32(part) != crc:
            raise DamagedEntryError(f"{path}: corrupt (checksum of frame {first + len(out)})")
        out.append(part)
        pos += length
    return out


def read_frames(path, view: str, point: int, run_len: int, start: int, count: int,
                out: np.ndarray | None = None, side: int | None = None) -> np.ndarray:
    """uint8 [count, S, S, 3]: frames start.. of sample point `point` (runs of run_len) of a
    view's container, checked and decoded (into `out` when given). `side`: the crop's side S,
    where a coded frame may be larger (H.264 pads an odd side by one)."""
    if codec_of(view)[0] == "h264":  # the kind is the view's; preprocessing sets only quality
        wanted = range(start, start + count)
        payloads = read_payloads(path, point * run_len, h264.payloads_needed(run_len, wanted))
        try:
            return h264.decode_run(payloads, run_len, wanted, side, out)
        except ValueError as exc:
            raise DamagedEntryError(f"{path}: {exc}") from None
    frames = [decode_frame(p, view) for p in read_payloads(path, point * run_len + start, count)]
    if out is None:
        return np.stack(frames)
    if out.shape != (count, *frames[0].shape):
        raise DamagedEntryError(f"{path}: frames of {frames[0].shape}, expected {out.shape[1:]}")
    for i, frame in enumerate(frames):
        out[i] = frame
    return out


def read_array(path) -> np.ndarray:
    """The float32 [rows, cols] array of an encode_array container, checked."""
    (data,) = read_payloads(path, 0, 1)
    rows, cols = struct.unpack_from("<II", data)
    if len(data) != 8 + 2 * rows * cols:
        raise DamagedEntryError(f"{path}: array of {rows}x{cols} does not match its {len(data)} bytes")
    return np.frombuffer(data, dtype="<f2", offset=8).reshape(rows, cols).astype(np.float32)


def file_check(path) -> dict:
    """{"size", "crc32"} of a written file: recorded in the entry's json."""
    with open(path, "rb") as f:
        data = f.read()
    return {"size": len(data), "crc32": zlib.crc32(data)}


def estimate_entry_bytes(crop_size: int, frames_per_video: int, clip_len: int,
                         views: Sequence[str], audio_s: float = 0.0, preprocessing: str = "none") -> int:
    """Expected bytes of one entry at these settings, from the measured figures above."""
    from common.faces.views import run_length

    px = crop_size * crop_size * frames_per_video * PREPROCESSING_GROWTH.get(preprocessing, 1.0)
    total = sum(BYTES_PER_PIXEL[v] * px * run_length(v, clip_len) for v in views)
    return int(total + MEL_BYTES_PER_S * audio_s + 8_000)  # + the json
