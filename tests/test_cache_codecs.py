"""The cache's own codecs: the face view's runs as short H.264 streams (common/faces/h264.py),
and the log-mel as float16 (common/faces/codec.py)."""
from __future__ import annotations

import numpy as np
import pytest

from common.data.synthetic import face_video
from common.faces import codec, h264


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.fixture(scope="module")
def run() -> np.ndarray:
    """Eight frames of a synthetic face panning 4 px a frame, 64 px: each frame its own."""
    base = face_video(1, size=(96, 64), identity=1, seed=4)[0]
    return np.stack([np.roll(base, 4 * i, axis=1)[:, :64] for i in range(8)])


def test_coding_order_starts_at_the_centre_and_covers_the_run():
    assert h264.coding_order(8) == [4, 5, 6, 7, 3, 2, 1, 0]
    assert h264.coding_order(1) == [0]
    for t in range(1, 17):
        assert sorted(h264.coding_order(t)) == list(range(t)) and h264.coding_order(t)[0] == t // 2


def test_every_part_of_a_run_reads_as_the_whole_run_decodes(run):
    """Payloads are in decode order (B-frames): a read of any frames gives exactly those frames
    of the whole run's decode, the centre frame from the first payload alone."""
    payloads = h264.encode_run(run, 14)
    assert len(payloads) == 8
    whole = h264.decode_run(payloads, 8, range(8))
    assert whole.shape == run.shape and psnr(whole, run) > 34  # 36.4 when written
    for a in range(8):
        for b in range(a + 1, 9):
            np.testing.assert_array_equal(h264.decode_run(payloads, 8, range(a, b)), whole[a:b])
    assert h264.payloads_needed(8, range(4, 5)) == 1
    np.testing.assert_array_equal(h264.decode_run(payloads[:1], 8, range(4, 5))[0], whole[4])
    with pytest.raises(ValueError):  # a clip needs the whole run
        h264.decode_run(payloads[:5], 8, range(2, 6))


def test_each_frame_is_its_own_and_encoding_is_deterministic(run):
    """Frame i of the decode is frame i of the input (not a neighbour: B-frames reorder), and
    the same crops give the same bytes (predict re-extracts and must read what training read)."""
    payloads = h264.encode_run(run, 14)
    assert payloads == h264.encode_run(run, 14)
    whole = h264.decode_run(payloads, 8, range(8))
    for i in range(8):
        errors = [psnr(whole[i], run[j]) for j in range(8)]
        assert int(np.argmax(errors)) == i


def test_no_sei_and_the_stream_still_decodes(run):
    payloads = h264.encode_run(run, 14)
    nal_types = [p[i + 3] & 0x1F for p in payloads for i in range(len(p) - 3) if p[i:i + 3] == b"\x00\x00\x01"]
    assert 6 not in nal_types and {7, 8, 5} <= set(nal_types)  # SPS, PPS, IDR slice
    with_sei = b"\x00\x00\x00\x01\x06\x05\x02ab\x80" + payloads[0]
    assert h264.drop_sei(with_sei) == payloads[0]


@pytest.mark.parametrize("side, floor", [(31, 31), (33, 31), (8, 24)])  # 33.9, 34.2, 27.3 dB when written
def test_odd_and_small_sides_round_trip(side, floor):
    frames = np.ascontiguousarray(face_video(3, size=(side, side), identity=0, seed=1))
    back = codec.round_trip(frames[None], "face")[0]
    assert back.shape == frames.shape and psnr(back, frames) > floor


def test_the_view_container_reads_each_point_and_a_broken_stream_is_a_damaged_entry(run, tmp_path):
    crops = np.stack([run, run[::-1]])  # two points
    path = tmp_path / "v.face.frames"
    path.write_bytes(codec.encode_view(crops, "face"))
    both = codec.round_trip(crops, "face")
    np.testing.assert_array_equal(codec.read_frames(path, "face", 1, 8, 0, 8, side=64), both[1])
    np.testing.assert_array_equal(codec.read_frames(path, "face", 0, 8, 4, 1, side=64)[0], both[0, 4])
    # a stream whose bytes and checksums agree but which is not H.264: reported, not served
    junk = codec.pack([b"\x00\x00\x00\x01\x65" + bytes(range(40))] * 16)
    path.write_bytes(junk)
    with pytest.raises(codec.DamagedEntryError):
        codec.read_frames(path, "face", 0, 8, 0, 8, side=64)


def test_the_log_mel_is_stored_as_float16_within_a_fiftieth_of_a_db(tmp_path):
    from common.data.audio import TOP_DB

    rng = np.random.default_rng(0)
    mel = np.clip(rng.normal(0.0, 0.5, (64, 1001)), -1, 1).astype(np.float32)  # values in [-1, 1]
    path = tmp_path / "v.mel.bin"
    path.write_bytes(codec.encode_array(mel))
    back = codec.read_array(path)
    assert back.dtype == np.float32 and back.shape == mel.shape
    assert path.stat().st_size < mel.nbytes * 0.51
    assert np.abs(back - mel).max() <= 2.0 ** -11  # of the [-1, 1] scale
    assert np.abs(back - mel).max() * TOP_DB / 2 <= 0.02  # in dB of the mel
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(codec.DamagedEntryError):
        codec.read_array(path)


def test_extraction_without_libx264_stops_first_with_one_line(sample_root, tmp_path, monkeypatch, capsys):
    import av

    from common.extract import main as extract_main

    monkeypatch.setattr(av, "codecs_available", set(av.codecs_available) - {"libx264"})
    args = ["--dataset", "faceforensics", "--data", str(sample_root / "faceforensics"),
            "--cache-dir", str(tmp_path / "c"), "--face-detector", "none", "--workers", "0", "--no-progress"]
    assert extract_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no libx264 encoder" in err[0]
    assert not list((tmp_path / "c").rglob("*.frames"))  # nothing extracted
