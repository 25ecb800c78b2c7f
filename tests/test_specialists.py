"""The five specialists: output grids, fixed filters, audio masking and temporal sensitivity."""
import pytest
import torch

from common.specialists import (AVSpecialist, BGSpecialist, CMSpecialist, RRSpecialist, SPECIALISTS, TMSpecialist,
                                dct_basis)

# The seed's feature sizes: C x 7 x 7.
EXPECTED = {"bg": (44, 2156), "av": (48, 2352), "cm": (40, 1960), "rr": (36, 1764), "tm": (52, 2548)}
B, T, S = 2, 4, 64


def run(name, module, clip, mel=None, missing=None):
    if name == "av":
        return module(clip, mel if mel is not None else torch.randn(clip.shape[0], 1, 64, 32),
                      missing if missing is not None else torch.zeros(clip.shape[0]))
    if name == "tm":
        return module(clip)
    return module(clip[:, clip.shape[1] // 2])


@pytest.mark.parametrize("name", list(EXPECTED))
@pytest.mark.parametrize("size", [64, 96])
def test_output_grid_matches_seed(name, size):
    torch.manual_seed(0)
    module = SPECIALISTS[name]()
    channels, features = EXPECTED[name]
    assert module.out_channels == channels
    out = run(name, module, torch.randn(B, T, 3, size, size))
    assert out.shape == (B, channels, 7, 7)
    assert out[0].numel() == features
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("cls, names", [
    (CMSpecialist, ["dct"]),
    (RRSpecialist, ["laplacian", "sobel"]),
    (TMSpecialist, ["sobel"]),
])
def test_fixed_filters_are_persistent_buffers(cls, names):
    module = cls()
    param_ids = {id(p) for p in module.parameters()}
    state = module.state_dict()
    for n in names:
        buf = getattr(module, n)
        assert id(buf) not in param_ids
        assert not buf.requires_grad
        assert n in state and torch.equal(state[n], buf)
    assert not any(n in dict(module.named_parameters()) for n in names)


def test_dct_basis_is_orthonormal_dct_ii():
    basis = dct_basis(8)
    assert basis.shape == (64, 1, 8, 8)
    flat = basis.reshape(64, 64).double()
    assert torch.allclose(flat @ flat.t(), torch.eye(64, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(basis[0], torch.full((1, 8, 8), 1 / 8))  # DC filter = block mean * 8
    # A constant block has energy only in the DC coefficient.
    coeff = torch.nn.functional.conv2d(torch.full((1, 1, 8, 8), 3.0), basis, stride=8).flatten()
    assert coeff[0] == pytest.approx(24.0, abs=1e-5) and coeff[1:].abs().max() < 1e-5
    assert torch.equal(CMSpecialist().dct, basis)


def test_av_missing_audio_is_masked_and_flagged():
    torch.manual_seed(0)
    av = AVSpecialist().eval()
    clip = torch.randn(B, T, 3, S, S)
    mel = torch.randn(B, 1, 64, 32)
    zeros = torch.zeros_like(mel)
    present, absent = torch.zeros(B), torch.ones(B)
    with torch.no_grad():
        with_audio = av(clip, mel, present)
        missing = av(clip, zeros, absent)
        silent = av(clip, zeros, present)  # a zero spectrogram that claims to be real audio
        missing_noise = av(clip, mel, absent)  # garbage in the mel of a missing track
        no_mel = av(clip, None, None)
    for out in (with_audio, missing, silent):
        assert torch.isfinite(out).all()
    assert not torch.allclose(with_audio, missing)
    assert not torch.allclose(silent, missing)  # the flag, not only the mel, changes the output
    assert torch.equal(missing, missing_noise)  # masked: a missing track's mel is never read
    assert torch.allclose(no_mel, missing)


def test_av_reads_the_mouth_and_its_motion():
    torch.manual_seed(0)
    av = AVSpecialist().eval()
    mel, flag = torch.randn(1, 1, 64, 32), torch.zeros(1)
    still = torch.randn(1, 1, 3, S, S).repeat(1, T, 1, 1, 1)
    moving = still.clone()
    moving[:, 2:, :, S // 2:] += 0.5  # the mouth region changes half-way through
    eyes_moving = still.clone()
    eyes_moving[:, 2:, :, : S // 2] += 0.5  # only the upper half changes
    with torch.no_grad():
        base = av(still, mel, flag)
        assert not torch.allclose(base, av(moving, mel, flag))
        assert torch.allclose(base, av(eyes_moving, mel, flag))


def test_tm_depends_on_motion_and_frame_order():
    torch.manual_seed(0)
    tm = TMSpecialist().eval()
    image = torch.randn(1, 3, S + 16, S + 16)
    moving = torch.stack([image[0, :, 2 * t: 2 * t + S, 0:S] for t in range(T)]).unsqueeze(0)
    static = moving[:, :1].repeat(1, T, 1, 1, 1)
    shuffled = moving[:, [0, 2, 1, 3]]
    with torch.no_grad():
        out_moving, out_static, out_shuffled = tm(moving), tm(static), tm(shuffled)
    assert not torch.allclose(out_moving, out_static)
    assert not torch.allclose(out_moving, out_shuffled)
    # Two different still clips: the difference-based branches (frame consistency, channels
    # 0-12, and temporal artefacts, 26-38) see no motion in either, so they agree.
    with torch.no_grad():
        other_static = tm(moving[:, 3:4].repeat(1, T, 1, 1, 1))
    for lo, hi in ((0, 13), (26, 39)):
        assert torch.allclose(out_static[:, lo:hi], other_static[:, lo:hi], atol=1e-6)
        assert not torch.allclose(out_static[:, lo:hi], out_moving[:, lo:hi])


@pytest.mark.parametrize("t", [2, 3, 8])
def test_tm_accepts_other_clip_lengths(t):
    out = TMSpecialist()(torch.randn(2, t, 3, S, S))
    assert out.shape == (2, 52, 7, 7) and torch.isfinite(out).all()


def test_image_specialists_are_differentiable():
    for cls in (BGSpecialist, CMSpecialist, RRSpecialist):
        m = cls()
        x = torch.randn(2, 3, S, S, requires_grad=True)
        m(x).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
        assert all(p.grad is not None for p in m.parameters())
