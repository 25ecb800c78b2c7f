"""Audio track -> 16 kHz mono waveform -> log-mel spectrogram, and per-clip mel windows.

A video without a usable audio track gives None, never silence or noise: the AV model is
told explicitly (audio_missing = 1) instead of learning from a fake signal.

Time base: sample 0 of a decoded waveform (and mel frame 0) is the video stream's start,
the time of frame index 0, so frame i at fps sits at i / fps on both tracks. An audio
stream that starts later than the video is preceded by silence; one that starts earlier
loses its head.
"""
from __future__ import annotations

import logging
import os

import av
import numpy as np

SAMPLE_RATE = 16000
N_MELS = 64
HOP_LENGTH = 160  # 10 ms
N_FFT = 400  # 25 ms
MEL_WINDOW = 32  # mel frames per sample, ~0.32 s centred on the clip
HOP_S = HOP_LENGTH / SAMPLE_RATE
# log-mel scaling: the loudest bin of a track maps to +1, TOP_DB below it (and quieter) to -1.
TOP_DB = 80.0

log = logging.getLogger(__name__)


def decode_audio(path: str | os.PathLike) -> np.ndarray | None:
    """float32 mono waveform at SAMPLE_RATE, or None (no audio stream / undecodable track)."""
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        log.warning("%s: audio not read, cannot open file (%s)", path,
                    getattr(exc, "strerror", None) or exc)
        return None
    try:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        video_start = _start_s(container.streams.video[0]) if container.streams.video else None
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks: list[np.ndarray] = []
        audio_start = None
        for frame in container.decode(stream):
            if audio_start is None:  # the first decoded sample's time, priming included
                audio_start = frame.time if frame.time is not None else _start_s(stream)
            frame.pts = None  # let the resampler count samples instead of trusting timestamps
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):  # flush what the resampler still holds
            chunks.append(out.to_ndarray().reshape(-1))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        log.warning("%s: audio track failed to decode (%s)", path,
                    getattr(exc, "strerror", None) or exc)
        return None
    finally:
        container.close()
    if not chunks:
        log.warning("%s: audio track holds no samples", path)
        return None
    wave = np.concatenate(chunks).astype(np.float32, copy=False)
    if not np.isfinite(wave).all():
        log.warning("%s: audio track decoded to non-finite samples", path)
        return None
    lead = (audio_start or 0.0) - (video_start or 0.0)
    wave = align_to_video(wave, lead)
    if not len(wave):
        log.warning("%s: audio track ends before the video starts (%.3f s lead)", path, lead)
        return None
    return wave


def _start_s(stream) -> float | None:
    """A stream's start time in seconds, when its header gives one."""
    if stream.start_time is None or not stream.time_base:
        return None
    return float(stream.start_time * stream.time_base)


def align_to_video(wave: np.ndarray, lead_s: float) -> np.ndarray:
    """Shift a waveform whose first sample is `lead_s` seconds after the video's start so that
    its sample 0 is the video's start: silence in front for a late track, the head cut for an
    early one (negative lead)."""
    shift = int(round(lead_s * SAMPLE_RATE))
    if shift > 0:
        return np.concatenate([np.zeros(shift, dtype=wave.dtype), wave])
    return wave[-shift:] if shift < 0 else wave


def log_mel(wave: np.ndarray) -> np.ndarray:
    """float32 [N_MELS, F] log-mel, F = len(wave) // HOP_LENGTH + 1, values in [-1, 1].

    dB relative to the track's loudest bin, floored TOP_DB below, mapped linearly to
    [-1, 1]: loudness-invariant and bounded. A silent track is -1 everywhere.
    """
    import librosa  # slow import; only workers that decode audio pay for it

    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    n_frames = len(wave) // HOP_LENGTH + 1
    if len(wave) == 0:
        return np.full((N_MELS, 0), -1.0, dtype=np.float32)
    power = librosa.feature.melspectrogram(
        y=wave, sr=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP_LENGTH, n_mels=N_MELS,
        power=2.0, center=True, pad_mode="constant")
    power = power[:, :n_frames]
    peak = float(power.max())
    if peak <= 1e-10:
        return np.full(power.shape, -1.0, dtype=np.float32)
    db = 10.0 * np.log10(np.maximum(power, 1e-10) / peak)
    db = np.maximum(db, -TOP_DB)
    return (db / (TOP_DB / 2.0) + 1.0).astype(np.float32)


def mel_frame(time_s: float) -> int:
    """Index of the mel frame centred at time_s (frame f is centred at f * HOP_S)."""
    return int(round(time_s / HOP_S))


def mel_window(mel: np.ndarray, centre_time_s: float, width: int = MEL_WINDOW,
               pad_value: float = 0.0) -> np.ndarray:
    """[N_MELS, width] slice of mel whose column width // 2 is the frame at centre_time_s.

    Columns outside the track are pad_value (0 by default, as for a missing track).
    """
    mel = np.asarray(mel, dtype=np.float32)
    out = np.full((mel.shape[0], width), pad_value, dtype=np.float32)
    first = mel_frame(centre_time_s) - width // 2
    lo, hi = max(first, 0), min(first + width, mel.shape[1])
    if hi > lo:
        out[:, lo - first:hi - first] = mel[:, lo:hi]
    return out
