"""common.faces.video: probing, sparse decoding (with seeks) and evenly spaced sample points."""
from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest

from common.errors import UserError
from common.faces import video
from common.faces.video import BadVideoError, count_frames, probe, read_frames, sample_points


def write_mp4(path, frames, fps=25.0, audio=None, sample_rate=44100, gop=None, faststart=False):
    """Tiny H.264 (+ AAC mono) writer. `gop` sets the keyframe interval, which the seek
    tests need; `faststart` puts the index first, so a cut file still opens."""
    frames = None if frames is None else np.asarray(frames, dtype=np.uint8)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=options) as out:
        vs = None
        if frames is not None:
            vs = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            vs.width, vs.height, vs.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            opts = {"crf": "12", "preset": "veryfast"}  # veryfast keeps B-frames
            if gop:
                opts.update(g=str(gop), keyint_min=str(gop), sc_threshold="0")
            vs.options = opts
        aus = None
        if audio is not None:
            aus = out.add_stream("aac", rate=sample_rate)
            aus.layout = "mono"
        if vs is not None:
            for f in frames:
                out.mux(vs.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
            out.mux(vs.encode(None))
        if aus is not None:
            wave = np.asarray(audio, dtype=np.float32).reshape(1, -1)
            for start in range(0, wave.shape[1], 4096):
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, start:start + 4096]),
                                                format="flt", layout="mono")
                af.sample_rate, af.pts = sample_rate, start
                out.mux(aus.encode(af))
            out.mux(aus.encode(None))
    return str(path)


def numbered_frames(n, h=64, w=96, seed=0):
    """Frames that differ from each other everywhere (noise) plus a moving bar."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 255, size=(n, h // 8, w // 8, 3), dtype=np.uint8)
    frames = frames.repeat(8, axis=1).repeat(8, axis=2)
    for i in range(n):
        frames[i, :, (i * 3) % w] = 255
    return frames


def full_decode(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("video")
    short = write_mp4(d / "short.mp4", numbered_frames(40))
    long = write_mp4(d / "long.mp4", numbered_frames(250, seed=1), gop=25)
    return {"dir": d, "short": short, "long": long}


# ------------------------------------------------------------------ sample_points
def test_sample_points_even_spacing_and_ends():
    runs = sample_points(100, 4, 3)
    assert len(runs) == 4 and all(len(r) == 3 for r in runs)
    assert runs[0][0] == 0 and runs[-1][-1] == 99
    assert all(r == list(range(r[0], r[0] + 3)) for r in runs)
    centres = [r[1] for r in runs]
    gaps = np.diff(centres)
    assert gaps.max() - gaps.min() <= 1 and gaps.min() >= 30


def test_sample_points_default_sizes_cover_whole_video():
    runs = sample_points(300, 32, 8)
    assert runs[0][0] == 0 and runs[-1][-1] == 299 and len(runs) == 32
    assert all(0 <= i < 300 for r in runs for i in r)


def test_sample_points_short_videos():
    assert sample_points(2, 3, 4) == [[0, 1, 1, 1]] * 3  # repeats the last frame
    assert sample_points(0, 2, 3) == [[0, 0, 0]] * 2
    runs = sample_points(10, 8, 4)  # runs overlap but stay inside
    assert runs[0] == [0, 1, 2, 3] and runs[-1] == [6, 7, 8, 9]
    assert sample_points(50, 1, 5) == [[22, 23, 24, 25, 26]]  # single run in the middle
    with pytest.raises(ValueError):
        sample_points(10, 0, 3)


# ------------------------------------------------------------------ probe / read
def test_probe_reports_size_rate_and_length(clips):
    info = probe(clips["short"])
    assert (info.n_frames, info.width, info.height) == (40, 96, 64)
    assert info.fps == pytest.approx(25.0)
    assert info.duration_s == pytest.approx(1.6, abs=0.05)
    assert info.has_audio is False
    # Matroska has no frame count in its header: the length comes from duration * fps
    mkv = write_mp4(clips["dir"] / "short.mkv", numbered_frames(40))
    assert abs(probe(mkv).n_frames - 40) <= 1


def test_read_frames_matches_sequential_decode(clips):
    ref = full_decode(clips["short"])
    assert len(ref) == 40
    wanted = [0, 5, 6, 7, 39]
    got = read_frames(clips["short"], wanted)
    assert sorted(got) == wanted
    for i in wanted:
        assert got[i].dtype == np.uint8 and got[i].shape == (64, 96, 3)
        np.testing.assert_array_equal(got[i], ref[i])


def test_read_frames_seeks_over_long_gaps(clips, monkeypatch):
    ref = full_decode(clips["long"])
    assert len(ref) == 250
    seeks = []
    real_open = av.open

    class Spy:
        def __init__(self, c):
            self._c = c

        def seek(self, *a, **kw):
            seeks.append(a)
            return self._c.seek(*a, **kw)

        def __getattr__(self, name):
            return getattr(self._c, name)

    monkeypatch.setattr(video.av, "open", lambda *a, **kw: Spy(real_open(*a, **kw)))
    wanted = [3, 120, 121, 137, 240, 249]
    got = read_frames(clips["long"], wanted)
    assert sorted(got) == wanted
    for i in wanted:
        np.testing.assert_array_equal(got[i], ref[i], err_msg=f"frame {i}")
    assert len(seeks) >= 2  # 3 -> 120 and 137 -> 240 are jumped, not decoded through


def test_missing_indices_past_the_end_are_absent(clips):
    assert sorted(read_frames(clips["short"], [38, 39, 40, 100])) == [38, 39]
    assert sorted(read_frames(clips["long"], [0, 500])) == [0]
    assert read_frames(clips["short"], []) == {}


def test_container_that_lies_about_its_length(clips):
    path = write_mp4(clips["dir"] / "cut_fast.mp4", numbered_frames(60, seed=2), faststart=True)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: int(len(data) * 0.5)])
    assert probe(path).n_frames == 60  # the header still promises 60
    real = count_frames(path)
    assert 0 < real < 60
    got = read_frames(path, [0, real - 1, 59])
    assert 0 in got and 59 not in got


@pytest.mark.parametrize("kind", ["zero", "truncated", "text", "missing", "audio_only"])
def test_bad_videos_raise_one_line_errors(clips, kind):
    d = clips["dir"]
    path = d / f"bad_{kind}.mp4"
    if kind == "zero":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = open(clips["short"], "rb").read()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("this is not a video\n" * 20)
    elif kind == "audio_only":
        write_mp4(path, None, audio=np.zeros(8000, np.float32), sample_rate=16000)
    for fn in (probe, lambda p: read_frames(p, [0])):
        with pytest.raises(BadVideoError) as err:
            fn(path)
        msg = str(err.value)
        assert isinstance(err.value, UserError)
        assert "\n" not in msg and str(path) in msg and err.value.path == str(path)
    expect = {"zero": "empty", "missing": "not found", "audio_only": "no video stream",
              "text": "not a readable video", "truncated": "not a readable video"}[kind]
    assert expect in msg


def _y4m(path, width, height, rate, frames=1, payload=7000):
    """A raw YUV4MPEG2 file whose header claims what it likes: the crafted-header case."""
    body = b"".join(b"FRAME\n" + b"\x80" * payload for _ in range(frames))
    path.write_bytes(f"YUV4MPEG2 W{width} H{height} F{rate} Ip A1:1 C420jpeg\n".encode() + body)
    return path


def test_absurd_headers_are_bad_videos_before_any_decoding(tmp_path):
    huge = _y4m(tmp_path / "huge.y4m", 16000, 16000, "25:1")
    with pytest.raises(BadVideoError, match="16000x16000 is over the 8192 px limit"):
        probe(huge)
    long = _y4m(tmp_path / "long.y4m", 16, 16, "1:36000", frames=2, payload=384)
    with pytest.raises(BadVideoError, match="over the 2 h limit"):
        probe(long)
    # the crafted file costs a process next to nothing: peak memory well under 200 MB
    # VmHWM, not ru_maxrss: the latter keeps the forking pytest process's peak across exec.
    code = ("import sys\nfrom common.faces.video import probe, BadVideoError\n"
            "try:\n    probe(sys.argv[1])\nexcept BadVideoError as e:\n    print(e.reason)\n"
            "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code, str(huge)], cwd=repo, capture_output=True,
                         text=True, timeout=60, check=True).stdout.split("\n")
    assert "8192 px limit" in out[0] and int(out[1]) < 200 * 1024  # VmHWM is in kB


@pytest.mark.parametrize("fmt", ["yuv420p", "yuv444p"])
def test_a_region_of_any_planar_yuv_frame_converts_alone(fmt):
    """FF++ c23 decodes to yuv444p: its crops must not convert the whole frame either."""
    rgb = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=fmt)
    full = frame.to_ndarray(format="rgb24")
    conv = video.RegionConverter()
    for box in [(3, 5, 100, 77), (0, 0, 160, 120), (31, 17, 64, 50)]:
        assert conv._blocks(frame, *box) is not None  # the fast path, not the fallback
        got = conv.rgb(frame, *box)
        np.testing.assert_array_equal(got, full[box[1]:box[3], box[0]:box[2]])


def _smooth_frame(fmt, colorspace, color_range, w=160, h=120):
    """A frame of smooth colour ramps (what faces are), tagged with a colour space and range."""
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    rgb = np.dstack([40 + xx * 1.2, 30 + yy * 1.5, 200 - xx * 0.6 - yy * 0.4]).clip(0, 255)
    frame = av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24").reformat(format=fmt)
    frame.colorspace, frame.color_range = colorspace, color_range
    return frame


@pytest.mark.parametrize("fmt", ["yuv420p", "yuv444p"])
@pytest.mark.parametrize("colorspace, color_range", [
    (2, 0), (2, 1), (2, 2), (1, 1), (1, 2), (5, 1), (6, 1), (9, 1), (4, 1)])  # 4 FCC: swscale's path
def test_scaled_crops_have_the_colours_swscale_gives_the_frame(fmt, colorspace, color_range):
    """resized() scales in YUV and applies the frame's own matrix (BT.601/709/2020, limited
    or full range): the colours of the whole frame's RGB conversion, resized."""
    frame = _smooth_frame(fmt, colorspace, color_range)
    full = frame.to_ndarray(format="rgb24")
    assert (video.rgb_matrix(frame) is None) == (colorspace == 4)
    conv = video.RegionConverter()
    for box, size in [((20, 10, 120, 110), 64), ((0, 0, 120, 120), 120), ((40, 20, 72, 52), 48)]:
        x0, y0, x1, y1 = box
        got = conv.resized(frame, *box, size, size)
        assert got.shape == (size, size, 3) and got.dtype == np.uint8
        want = cv2.resize(full[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_AREA)
        diff = np.abs(got.astype(int) - want)  # 4:2:0: chroma is resampled, not copied
        mean, most = (2.0, 6) if fmt == "yuv420p" else (0.6, 3)
        assert diff.mean() < mean and diff[4:-4, 4:-4].max() <= most, (box, diff.mean(), diff.max())
    # a wrong matrix would be far off: BT.709 read as BT.601 shifts these colours by > 5 levels
    if colorspace == 1:
        frame.colorspace = 2
        assert np.abs(conv.resized(frame, 20, 10, 120, 110, 64, 64).astype(int)
                      - cv2.resize(full[10:110, 20:120], (64, 64), interpolation=cv2.INTER_AREA)).max() > 5
