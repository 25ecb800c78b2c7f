"""common.data.audio: decode to 16 kHz mono, log-mel scaling, mel windows centred on a time."""
from __future__ import annotations

import logging

import av
import numpy as np
import pytest

from common.data.audio import (HOP_LENGTH, MEL_WINDOW, N_MELS, SAMPLE_RATE, align_to_video, decode_audio, log_mel,
                               mel_frame, mel_window)
from tests.test_video import numbered_frames, write_mp4


def tone(seconds, sr, freq=1000.0, start=None, stop=None):
    """Silence with a sine burst between start and stop seconds (whole track if None)."""
    t = np.arange(int(seconds * sr)) / sr
    wave = 0.5 * np.sin(2 * np.pi * freq * t)
    if start is not None:
        wave[(t < start) | (t >= stop)] = 0.0
    return wave.astype(np.float32)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("audio")
    frames = numbered_frames(50)  # 2.0 s at 25 fps
    silent = write_mp4(d / "silent.mp4", frames)
    sound = write_mp4(d / "sound.mp4", frames, audio=tone(2.0, 44100, start=1.0, stop=1.2),
                      sample_rate=44100)
    return {"silent": silent, "sound": sound, "dir": d}


def test_no_audio_stream_gives_none(media):
    assert decode_audio(media["silent"]) is None


def test_decoded_track_is_16k_mono_with_the_burst_in_place(media):
    wave = decode_audio(media["sound"])
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) / SAMPLE_RATE - 2.0) < 0.1
    env = np.abs(wave)
    loud = np.flatnonzero(env > 0.1) / SAMPLE_RATE
    assert loud.min() == pytest.approx(1.0, abs=0.03) and loud.max() == pytest.approx(1.2, abs=0.03)
    assert env[: int(0.9 * SAMPLE_RATE)].max() < 0.05  # silence stays silent


def test_undecodable_file_gives_none_and_a_logged_reason(media, caplog):
    empty = media["dir"] / "empty.mp4"
    empty.write_bytes(b"")
    garbage = media["dir"] / "garbage.mp4"
    garbage.write_bytes(b"\x00\x01junk" * 100)
    with caplog.at_level(logging.WARNING, logger="common.data.audio"):
        assert decode_audio(empty) is None
        assert decode_audio(garbage) is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("\n" not in m for m in lines)
    assert str(empty) in lines[0] and str(garbage) in lines[1]


def test_log_mel_shape_range_and_silence():
    wave = tone(1.0, SAMPLE_RATE)
    mel = log_mel(wave)
    assert mel.dtype == np.float32
    assert mel.shape == (N_MELS, len(wave) // HOP_LENGTH + 1)
    assert mel.min() >= -1.0 and mel.max() == pytest.approx(1.0)
    # a 1 kHz tone is loudest in a middle band, not in the lowest or highest mel bins
    band = mel[:, 10:-10].mean(axis=1).argmax()
    assert 10 < band < N_MELS - 10
    silent = log_mel(np.zeros(SAMPLE_RATE // 2, np.float32))
    assert silent.shape == (N_MELS, 51) and np.all(silent == -1.0)
    # loudness-invariant: the same sound 20x quieter maps to the same values
    np.testing.assert_allclose(log_mel(wave * 0.05), mel, atol=1e-4)


def test_mel_window_is_centred_on_the_time():
    wave = tone(3.0, SAMPLE_RATE, start=1.495, stop=1.505)  # 10 ms click around 1.5 s
    mel = log_mel(wave)
    energy = mel.mean(axis=0)
    assert abs(int(energy.argmax()) - mel_frame(1.5)) <= 1
    win = mel_window(mel, 1.5)
    assert win.shape == (N_MELS, MEL_WINDOW) and win.dtype == np.float32
    col = win.mean(axis=0)
    assert abs(int(col.argmax()) - MEL_WINDOW // 2) <= 1
    assert col[0] < col.max() - 0.5 and col[-1] < col.max() - 0.5
    np.testing.assert_array_equal(win, mel[:, 150 - 16:150 + 16])
    # 0.1 s earlier the click sits 10 frames right of the centre
    assert abs(int(mel_window(mel, 1.4).mean(axis=0).argmax()) - (MEL_WINDOW // 2 + 10)) <= 1


def test_mel_window_zero_pads_at_both_ends():
    mel = log_mel(tone(1.0, SAMPLE_RATE))  # 101 frames, values in [-1, 1], none exactly 0 pad
    start = mel_window(mel, 0.0)
    assert np.all(start[:, :16] == 0.0)
    np.testing.assert_array_equal(start[:, 16:], mel[:, :16])
    end = mel_window(mel, 1.0)  # frame 100 is the last
    np.testing.assert_array_equal(end[:, :17], mel[:, 84:101])
    assert np.all(end[:, 17:] == 0.0)
    assert np.all(mel_window(mel, 5.0) == 0.0)
    assert mel_window(np.zeros((N_MELS, 0), np.float32), 0.5).shape == (N_MELS, MEL_WINDOW)


def _late_audio_mp4(path, frames, wave, sample_rate, delay_s):
    """An mp4 whose audio stream starts `delay_s` after its video stream (audio pts offset)."""
    with av.open(str(path), mode="w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        aus = out.add_stream("aac", rate=sample_rate, layout="mono")
        for f in frames:
            out.mux(vs.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(vs.encode(None))
        planar = wave.reshape(1, -1)
        for start in range(0, planar.shape[1], 1024):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(planar[:, start:start + 1024]),
                                            format="fltp", layout="mono")
            af.sample_rate, af.pts = sample_rate, start + int(round(delay_s * sample_rate))
            out.mux(aus.encode(af))
        out.mux(aus.encode(None))
    return path


def test_audio_that_starts_after_the_video_is_placed_on_the_video_clock(media):
    # A burst 0.3-0.4 s into a track that starts 0.5 s after the first video frame is heard
    # 0.8-0.9 s into the video: that is where the decoded waveform must have it.
    path = _late_audio_mp4(media["dir"] / "late.mp4", numbered_frames(50),
                           tone(1.5, 16000, start=0.3, stop=0.4), 16000, delay_s=0.5)
    with av.open(str(path)) as c:  # the file really has the offset in its headers
        a = c.streams.audio[0]
        assert float(a.start_time * a.time_base) > 0.4
    wave = decode_audio(path)
    loud = np.flatnonzero(np.abs(wave) > 0.1) / SAMPLE_RATE
    assert loud.min() == pytest.approx(0.8, abs=0.02) and loud.max() == pytest.approx(0.9, abs=0.02)
    assert np.abs(wave[: int(0.75 * SAMPLE_RATE)]).max() < 0.05
    assert abs(len(wave) / SAMPLE_RATE - 2.0) < 0.1  # 0.5 s of lead + the 1.5 s track


def test_align_to_video_pads_a_late_track_and_cuts_an_early_one():
    wave = np.arange(1, 11, dtype=np.float32)
    late = align_to_video(wave, 3 / SAMPLE_RATE)  # starts 3 samples after the video
    assert late.tolist() == [0, 0, 0] + wave.tolist()
    early = align_to_video(wave, -2 / SAMPLE_RATE)  # starts 2 samples before the video
    assert early.tolist() == wave[2:].tolist()
    assert align_to_video(wave, 0.0) is wave
    assert len(align_to_video(wave, -1.0)) == 0  # ends before the video starts
