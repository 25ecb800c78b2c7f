"""The five specialist modules: each turns its input into a [B, C, 7, 7] feature map.

Each specialist runs beside a large backbone, so every one of them downsamples early and keeps
few channels. Each has four named branches (the seed's design); their outputs are pooled to 7x7
and concatenated, so `C = out_channels` is the sum of the four branch widths.

Fixed (non-learned) filters — DCT basis, Laplacian, Sobel — are persistent buffers, so they
travel with the checkpoint but are never touched by the optimiser.

Image inputs are ImageNet-normalised RGB, as produced by `common.preprocess.ClipTransform`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from common.preprocess import IMAGENET_MEAN, IMAGENET_STD

GRID = 7  # every specialist ends on a 7x7 grid
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, the luma JPEG/MPEG codecs quantise


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, padding: int | None = None) -> nn.Sequential:
    """Conv -> BatchNorm -> ReLU, 'same' padding by default."""
    pad = k // 2 if padding is None else padding
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=pad, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def conv_gn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 4) -> nn.Sequential:
    """Conv -> GroupNorm -> ReLU: per-sample normalisation, no running statistics."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
        nn.GroupNorm(groups, cout),
        nn.ReLU(inplace=True),
    )


def to_grid(x: torch.Tensor) -> torch.Tensor:
    """Pool any feature map to the common 7x7 grid."""
    return F.adaptive_avg_pool2d(x, GRID)


def sobel_kernels() -> torch.Tensor:
    """[2, 1, 3, 3]: horizontal and vertical Sobel derivative filters."""
    gx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
    return torch.stack([gx, gx.t()]).unsqueeze(1)


def dct_basis(n: int = 8) -> torch.Tensor:
    """[n*n, 1, n, n] orthonormal 2-D DCT-II basis (row-major over (u, v) frequencies)."""
    k = torch.arange(n, dtype=torch.float64)
    scale = torch.full((n,), math.sqrt(2.0 / n), dtype=torch.float64)
    scale[0] = math.sqrt(1.0 / n)
    # c[u, x] = scale(u) * cos((2x + 1) u pi / 2n): the 1-D orthonormal DCT-II matrix
    c = scale[:, None] * torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / (2 * n))
    basis = torch.einsum("ux,vy->uvxy", c, c).reshape(n * n, 1, n, n)
    return basis.float()


class _Unnormalise(nn.Module):
    """Undo the ImageNet normalisation, giving RGB in [0, 1] and its luma."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.register_buffer("luma_w", torch.tensor(_LUMA).view(1, 3, 1, 1))

    def rgb(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean

    def luma(self, x: torch.Tensor) -> torch.Tensor:
        return (self.rgb(x) * self.luma_w).sum(dim=1, keepdim=True)


class BGSpecialist(nn.Module):
    """Background / lighting: texture, light direction, shadows, colour temperature."""

    out_channels = 44

    def __init__(self) -> None:
        super().__init__()
        # 1/4 resolution stem: lighting and background cues are low-frequency.
        self.stem = nn.Sequential(conv_bn(3, 16, 3, stride=2), conv_bn(16, 24, 3, stride=2))
        self.background_texture = conv_bn(24, 11, 7, stride=2)
        self.lighting_direction = conv_bn(24, 11, 5, stride=2)
        self.shadow_consistency = conv_bn(24, 11, 9, stride=2)
        # Colour temperature looks at the colour itself, not only the learned stem: the stem
        # features plus the raw RGB at the same resolution.
        self.colour_temperature = conv_bn(24 + 3, 11, 3, stride=2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        f = self.stem(image)
        rgb_small = F.adaptive_avg_pool2d(image, f.shape[-2:])
        parts = [
            self.background_texture(f),
            self.lighting_direction(f),
            self.shadow_consistency(f),
            self.colour_temperature(torch.cat([f, rgb_small], dim=1)),
        ]
        return torch.cat([to_grid(p) for p in parts], dim=1)


class AVSpecialist(nn.Module):
    """Audio-visual: lip motion vs. the log-mel spectrogram.

    The visual stream reads the lower half of the face crop (the mouth) and its frame-to-frame
    differences. When `audio_missing` is 1 the audio features are multiplied by zero and the flag
    itself enters the correlation branch as a constant channel, so a missing track is never read
    as (silent) audio.
    """

    out_channels = 48

    def __init__(self) -> None:
        super().__init__()
        # Visual: one shared 2-D stem applied to every frame difference of the mouth region.
        self.mouth_stem = nn.Sequential(conv_bn(3, 16, 3, stride=2), conv_bn(16, 24, 3, stride=2))
        self.mouth_appearance = conv_bn(3, 8, 3, stride=4, padding=1)
        self.lip_sync = conv_bn(2 * 24 + 8, 12, 5)
        # Audio: 2-D convs over (mel bins, time). GroupNorm, not BatchNorm: whole stages train on
        # datasets without audio (all-zero mels), which would corrupt BatchNorm running statistics
        # for the stage that finally brings real audio. It also makes the log-mel scale irrelevant.
        self.audio_stem = conv_gn(1, 16, 3, stride=2)
        self.voice_frequency = conv_gn(16, 12, 7)
        self.temporal_audio = conv_gn(16, 12, 9)
        # Fusion sees the lip features, the (masked) audio features and the missing flag.
        self.av_correlation = conv_bn(12 + 24 + 1, 12, 3)

    @staticmethod
    def _mouth(clip: torch.Tensor) -> torch.Tensor:
        return clip[..., clip.shape[-2] // 2:, :]

    def _visual(self, clip: torch.Tensor) -> torch.Tensor:
        b, t = clip.shape[:2]
        mouth = self._mouth(clip)
        if t >= 2:
            diffs = mouth[:, 1:] - mouth[:, :-1]
        else:  # a single frame has no motion
            diffs = torch.zeros_like(mouth)
        n = diffs.shape[1]
        f = self.mouth_stem(diffs.flatten(0, 1))
        f = f.reshape(b, n, *f.shape[1:])
        motion = torch.cat([f.mean(dim=1), f.amax(dim=1)], dim=1)
        centre = self.mouth_appearance(mouth[:, t // 2])
        if centre.shape[-2:] != motion.shape[-2:]:
            centre = F.interpolate(centre, size=motion.shape[-2:], mode="bilinear", align_corners=False)
        return to_grid(self.lip_sync(torch.cat([motion, centre], dim=1)))

    def forward(
        self,
        clip: torch.Tensor,
        mel: torch.Tensor | None = None,
        audio_missing: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b = clip.shape[0]
        lips = self._visual(clip)
        if audio_missing is None:
            # no flag given: the audio is missing exactly when no spectrogram was given
            audio_missing = torch.full((b,), float(mel is None), device=clip.device)
        missing = audio_missing.to(clip.dtype).reshape(b, 1, 1, 1)
        present = 1.0 - missing
        if mel is None:  # no spectrogram at all: the audio features are zero, as when masked
            audio = clip.new_zeros(b, 24, GRID, GRID)
        else:
            a = self.audio_stem(mel.to(clip.dtype) * present)
            audio = torch.cat([to_grid(self.voice_frequency(a)), to_grid(self.temporal_audio(a))], dim=1)
            audio = audio * present
        flag = missing.expand(b, 1, GRID, GRID)
        fused = self.av_correlation(torch.cat([lips, audio, flag], dim=1))
        voice, temporal = audio[:, :12], audio[:, 12:]
        return torch.cat([lips, voice, fused, temporal], dim=1)


class CMSpecialist(nn.Module):
    """Compression: DCT statistics, quantisation artefacts, 8x8 block edges, compression level."""

    out_channels = 40

    def __init__(self) -> None:
        super().__init__()
        self.unnorm = _Unnormalise()
        self.register_buffer("dct", dct_basis(8))  # fixed JPEG-style 8x8 DCT-II
        self.dct_coefficients = nn.Sequential(
            nn.BatchNorm2d(64), nn.Conv2d(64, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            conv_bn(32, 10, 3),
        )
        self.stem = conv_bn(3, 16, 3, stride=2)
        self.quantization_artifacts = conv_bn(16, 10, 4, stride=2, padding=1)
        self.block_boundary = conv_bn(16, 10, 3, stride=2)
        self.compression_level = conv_bn(16, 10, 5, stride=2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # Codecs quantise luma in pixel units: take the DCT on 0..255 luma, per 8x8 block.
        y = self.unnorm.luma(image) * 255.0 - 128.0
        coeff = F.conv2d(y, self.dct, stride=8)
        coeff = torch.sign(coeff) * torch.log1p(coeff.abs())  # compress the DC/AC dynamic range
        f = self.stem(image)
        parts = [
            self.dct_coefficients(coeff),
            self.quantization_artifacts(f),
            self.block_boundary(f),
            self.compression_level(f),
        ]
        return torch.cat([to_grid(p) for p in parts], dim=1)


class RRSpecialist(nn.Module):
    """Resolution: multi-scale pyramid, upscaling residue, edge sharpness, interpolation traces."""

    out_channels = 36

    def __init__(self) -> None:
        super().__init__()
        self.unnorm = _Unnormalise()
        lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        self.register_buffer("laplacian", lap.expand(3, 1, 3, 3).clone())
        self.register_buffer("sobel", sobel_kernels())
        self.pyramid_stem = conv_bn(3, 8, 3, stride=2)  # shared across the three scales
        self.multi_scale = conv_bn(3 * 8, 9, 1)
        self.upscaling_artifacts = nn.Sequential(conv_bn(3, 12, 3, stride=2), conv_bn(12, 9, 3, stride=2))
        self.edge_sharpness = nn.Sequential(conv_bn(3, 12, 3, stride=2), conv_bn(12, 9, 3, stride=2))
        # Period-2 sampling grids left by 2x upsamplers: a 2x2 stride-2 first layer sees them.
        self.pixel_interpolation = nn.Sequential(conv_bn(3, 12, 2, stride=2, padding=0),
                                                 conv_bn(12, 9, 3, stride=2))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        scales = [image, F.avg_pool2d(image, 2), F.avg_pool2d(image, 4)]
        pyramid = torch.cat([to_grid(self.pyramid_stem(s)) for s in scales], dim=1)
        residual = F.conv2d(image, self.laplacian, padding=1, groups=3)
        g = F.conv2d(self.unnorm.luma(image), self.sobel, padding=1)
        edges = torch.cat([g, torch.sqrt(g.pow(2).sum(dim=1, keepdim=True) + 1e-6)], dim=1)
        parts = [
            self.multi_scale(pyramid),
            self.upscaling_artifacts(residual),
            self.edge_sharpness(edges),
            self.pixel_interpolation(image),
        ]
        return torch.cat([to_grid(p) for p in parts], dim=1)


class TMSpecialist(nn.Module):
    """Temporal: frame consistency, motion, flicker and a brightness-constancy flow check.

    Works on any clip with T >= 2 frames (T = 1 gives zero motion features).
    """

    out_channels = 52

    def __init__(self) -> None:
        super().__init__()
        self.unnorm = _Unnormalise()
        self.register_buffer("sobel", sobel_kernels())
        self.frame_stem = nn.Sequential(conv_bn(3, 12, 3, stride=2), conv_bn(12, 16, 3, stride=2))
        self.frame_consistency = conv_bn(2 * 16, 13, 3, stride=2)
        self.motion_flow = nn.Sequential(
            nn.Conv3d(16, 13, 3, stride=(1, 2, 2), padding=1, bias=False),
            nn.BatchNorm3d(13),
            nn.ReLU(inplace=True),
        )
        self.temporal_artifacts = conv_bn(2 * 16, 13, 3, stride=2)
        self.flow_validator = nn.Sequential(conv_bn(7, 16, 3), conv_bn(16, 13, 3, stride=2))

    def _flow_terms(self, clip: torch.Tensor) -> torch.Tensor:
        """Lucas-Kanade structure terms averaged over time, on quarter-resolution luma.

        Real motion keeps It ≈ -(Ix u + Iy v) locally consistent; blended or re-rendered faces
        break that relation, which shows in how It correlates with the spatial gradients.
        """
        b, t = clip.shape[:2]
        # Luma on a 0..16 scale: products of gradients stay well above BatchNorm's eps.
        y = F.avg_pool2d(self.unnorm.luma(clip.flatten(0, 1)) * 16.0, 4)
        y = y.reshape(b, t, 1, *y.shape[-2:])
        if t < 2:
            return y.new_zeros(b, 7, *y.shape[-2:])
        it = y[:, 1:] - y[:, :-1]
        mid = 0.5 * (y[:, 1:] + y[:, :-1])
        g = F.conv2d(mid.flatten(0, 1), self.sobel, padding=1).reshape(b, t - 1, 2, *y.shape[-2:])
        ix, iy = g[:, :, :1], g[:, :, 1:]
        terms = torch.cat([it, it.abs(), ix * it, iy * it, ix * ix, iy * iy, ix * iy], dim=2)
        return terms.mean(dim=1)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        b, t = clip.shape[:2]
        f = self.frame_stem(clip.flatten(0, 1))
        f = f.reshape(b, t, *f.shape[1:])
        d1 = f[:, 1:] - f[:, :-1] if t >= 2 else torch.zeros_like(f)
        d2 = d1[:, 1:] - d1[:, :-1] if t >= 3 else torch.zeros_like(d1)
        consistency = torch.cat([d1.abs().mean(dim=1), d1.abs().amax(dim=1)], dim=1)
        flicker = torch.cat([d2.abs().mean(dim=1), d2.abs().amax(dim=1)], dim=1)
        motion = self.motion_flow(f.transpose(1, 2)).mean(dim=2)  # Conv3d over [B, C, T, H, W]
        parts = [
            self.frame_consistency(consistency),
            motion,
            self.temporal_artifacts(flicker),
            self.flow_validator(self._flow_terms(clip)),
        ]
        return torch.cat([to_grid(p) for p in parts], dim=1)


SPECIALISTS: dict[str, type[nn.Module]] = {
    "bg": BGSpecialist,
    "av": AVSpecialist,
    "cm": CMSpecialist,
    "rr": RRSpecialist,
    "tm": TMSpecialist,
}
