"""Stage augmentation on the training device: batched, one random draw per clip.

The DataLoader workers only read uint8 crops and collate them; the training loop hands each
batch and its per-sample seeds (from EpochSampler) to a ClipAugmenter on the model's device.
A clip's draw is shared by all of its frames: a rotation or a flip that changed from frame
to frame would itself look like a temporal artefact to the TM and AV models.

Per sample, the draw is a function of its seed alone (not of the batch it lands in, the
worker count or the number of GPUs), so a resumed run sees the same augmentations as an
uninterrupted one. The same code runs on the CPU (tests, demos) and on CUDA.

Per clip: colour jitter (brightness, contrast, saturation, in a random order), then one warp
(horizontal flip, rotation about the centre and, at "maximum", a perspective distortion,
composed into one homography: one interpolation, not three), then at "maximum" a Gaussian
blur. Magnitudes are recipe data: common.recipes.AUGMENTATION_LEVELS.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from common.preprocess import normalisation_constants, normalize_pixels
from common.recipes import AUGMENTATION_LEVELS, AugmentLevel

_UNIFORMS = 19  # uniform numbers drawn per clip (see ClipAugmenter.draw)
_GREY = (0.299, 0.587, 0.114)  # ITU-R 601 luma weights, as OpenCV and torchvision


@dataclass
class ClipDraw:
    """The random parameters of a batch of clips: one row per clip, none per frame."""
    flip: torch.Tensor      # [B] bool: horizontal flip
    angle: torch.Tensor     # [B] degrees, counter-clockwise
    factors: torch.Tensor   # [B, 3] brightness, contrast, saturation
    order: torch.Tensor     # [B, 3] the order the three jitter ops run in (0, 1, 2 as above)
    corners: torch.Tensor   # [B, 4, 2] inward corner shift as a fraction of the half side (x, y)
    sigma: torch.Tensor     # [B] blur sigma; 0 = no blur

    def __len__(self) -> int:
        return len(self.flip)


class ClipAugmenter:
    """augmenter(frames uint8 [B, T, 3, H, W], seeds int64 [B]) -> ImageNet-normalised float32
    [B, T, 3, H, W] on the frames' device."""

    def __init__(self, level: str | AugmentLevel) -> None:
        self.level = AUGMENTATION_LEVELS[level] if isinstance(level, str) else level
        if self.level.blur_kernel % 2 != 1:
            raise ValueError(f"blur kernel must be odd, got {self.level.blur_kernel}")
        self._generator = torch.Generator()
        self._constants: dict = {}  # device -> (scale, shift)

    def __call__(self, frames: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        return self.apply(frames, self.draw(seeds))

    # ------------------------------------------------------------------ the draw

    def draw(self, seeds: torch.Tensor) -> ClipDraw:
        """One row of parameters per seed, drawn on the CPU from a generator seeded by it."""
        seeds = [int(s) for s in torch.as_tensor(seeds).reshape(-1).tolist()]
        u = torch.empty(len(seeds), _UNIFORMS, dtype=torch.float64)
        for i, seed in enumerate(seeds):
            self._generator.manual_seed(seed)
            u[i] = torch.rand(_UNIFORMS, generator=self._generator, dtype=torch.float64)
        lv = self.level
        lo = max(0.0, 1.0 - lv.jitter)
        perspective = (u[:, 8] < lv.p_perspective).double()
        s_lo, s_hi = lv.blur_sigma
        blur = u[:, 17] < lv.p_blur
        return ClipDraw(
            flip=u[:, 0] < lv.p_flip,
            angle=lv.rotation_deg * (2.0 * u[:, 1] - 1.0),
            factors=lo + (1.0 + lv.jitter - lo) * u[:, 2:5],
            order=torch.argsort(u[:, 5:8], dim=1),
            corners=lv.perspective * u[:, 9:17].reshape(-1, 4, 2) * perspective[:, None, None],
            sigma=torch.where(blur, s_lo + (s_hi - s_lo) * u[:, 18], torch.zeros_like(u[:, 18])),
        )

    # ------------------------------------------------------------------ applying it

    def apply(self, frames: torch.Tensor, d: ClipDraw) -> torch.Tensor:
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be [B, T, 3, H, W], got {tuple(frames.shape)}")
        if len(d) != frames.shape[0]:
            raise ValueError(f"{len(d)} draws for a batch of {frames.shape[0]} clips")
        b, t, _, h, w = frames.shape
        dev = frames.device
        x = frames.float()  # pixel values 0..255 throughout
        x = _jitter(x, d.factors.to(dev, torch.float32), d.order.to(dev))
        if self.level.rotation_deg == 0 and self.level.p_perspective == 0:
            # No warp to draw (the native view): a flip is an exact column reversal, no resampling.
            flip = d.flip.to(dev).view(-1, 1, 1, 1, 1)
            x = torch.where(flip, x.flip(-1), x)
        else:
            x = _warp(x.reshape(b, t * 3, h, w), _homographies(d, h, w).to(dev, torch.float32))
            x = x.reshape(b, t, 3, h, w)
        if bool((d.sigma > 0).any()):
            x = _blur(x, d.sigma, self.level.blur_kernel)
        if dev not in self._constants:
            self._constants[dev] = normalisation_constants(dev)
        return normalize_pixels(x, *self._constants[dev])


def _jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast and saturation, each as a blend x * f + (1 - f) * ref with its
    own reference (black, the frame's mean grey, the frame's grey image), in each clip's
    order; clamped after every step, as on uint8."""
    weights = torch.tensor(_GREY, device=x.device, dtype=x.dtype).view(1, 1, 3, 1, 1)
    rows = torch.arange(len(order), device=x.device)
    for k in range(3):
        op = order[:, k]
        f = factors[rows, op].view(-1, 1, 1, 1, 1)
        grey = (x * weights).sum(dim=2, keepdim=True)                    # [B, T, 1, H, W]
        mean = grey.mean(dim=(3, 4), keepdim=True)                       # per frame
        op = op.view(-1, 1, 1, 1, 1)
        ref = torch.where(op == 0, torch.zeros_like(mean), torch.where(op == 1, mean, grey))
        x = (x * f + (1.0 - f) * ref).clamp_(0.0, 255.0)
    return x


def _homographies(d: ClipDraw, h: int, w: int) -> torch.Tensor:
    """[B, 3, 3] float64 maps from OUTPUT pixel (x, y, 1) to the source pixel it samples:
    the inverse of perspective @ rotation @ flip (source -> output)."""
    b = len(d)
    eye = torch.eye(3, dtype=torch.float64).expand(b, 3, 3)
    flip = eye.clone()
    flip[d.flip, 0, 0] = -1.0
    flip[d.flip, 0, 2] = w - 1.0
    a = torch.deg2rad(d.angle.double())
    cos, sin = torch.cos(a), torch.sin(a)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    rot = eye.clone()  # counter-clockwise on screen (y points down), as cv2.getRotationMatrix2D
    rot[:, 0, 0], rot[:, 0, 1], rot[:, 0, 2] = cos, sin, (1 - cos) * cx - sin * cy
    rot[:, 1, 0], rot[:, 1, 1], rot[:, 1, 2] = -sin, cos, sin * cx + (1 - cos) * cy
    starts = torch.tensor([[0.0, 0.0], [w - 1.0, 0.0], [w - 1.0, h - 1.0], [0.0, h - 1.0]],
                          dtype=torch.float64)
    inward = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]], dtype=torch.float64)
    half = torch.tensor([cx, cy], dtype=torch.float64)
    ends = starts + inward * d.corners.double() * half
    forward = _perspective(starts.expand(b, 4, 2), ends) @ rot @ flip
    return torch.linalg.inv(forward)


def _perspective(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """[B, 3, 3] homographies taking the 4 points src[b] to dst[b] (h33 = 1)."""
    b = src.shape[0]
    x, y = src[..., 0], src[..., 1]
    u, v = dst[..., 0], dst[..., 1]
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -x * u, -y * u], dim=-1)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -x * v, -y * v], dim=-1)
    a = torch.cat([rows_u, rows_v], dim=1)                  # [B, 8, 8]
    h = torch.linalg.solve(a, torch.cat([u, v], dim=1))     # [B, 8]
    return torch.cat([h, torch.ones(b, 1, dtype=h.dtype)], dim=1).reshape(b, 3, 3)


def _warp(x: torch.Tensor, back: torch.Tensor) -> torch.Tensor:
    """Bilinear resampling of [B, C, H, W] through per-sample output -> source homographies
    (one grid per clip serves all of its frames' channels); outside the source is black."""
    b, _, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=x.dtype),
                            torch.arange(w, device=x.device, dtype=x.dtype), indexing="ij")
    pix = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).reshape(1, h * w, 3)
    src = pix @ back.transpose(1, 2)                                   # [B, H*W, 3]
    src = src[..., :2] / src[..., 2:].clamp_min(1e-8)
    scale = torch.tensor([2.0 / max(1, w - 1), 2.0 / max(1, h - 1)], device=x.device, dtype=x.dtype)
    grid = (src * scale - 1.0).reshape(b, h, w, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _blur(x: torch.Tensor, sigma: torch.Tensor, size: int) -> torch.Tensor:
    """Separable Gaussian blur of the clips whose sigma > 0 (reflected border, as OpenCV)."""
    picked = torch.nonzero(sigma > 0).flatten()
    s = sigma[picked].double()
    offsets = torch.arange(size, dtype=torch.float64) - size // 2
    kernel = torch.exp(-offsets[None] ** 2 / (2 * s[:, None] ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).to(x.device, x.dtype)   # [N, size]
    picked = picked.to(x.device)
    sub = x[picked]                                                 # [N, T, 3, H, W]
    n, t, c, h, w = sub.shape
    kernel = kernel.repeat_interleave(t * c, dim=0)                 # one kernel per plane
    planes = sub.reshape(1, n * t * c, h, w)
    pad = size // 2
    planes = F.conv2d(F.pad(planes, (pad, pad, 0, 0), mode="reflect"),
                      kernel.view(-1, 1, 1, size), groups=n * t * c)
    planes = F.conv2d(F.pad(planes, (0, 0, pad, pad), mode="reflect"),
                      kernel.view(-1, 1, size, 1), groups=n * t * c)
    out = x.clone()
    out[picked] = planes.reshape(n, t, c, h, w)
    return out


def view_level(level: AugmentLevel, view: str, width: int) -> AugmentLevel:
    """A recipe's level as fits a view (common/faces/views.py).

    native: photometric only. Any rotation, perspective or blur moves or smooths the codec's
      8x8 grid, which is what CM looks for; a flip keeps every grid line on a 16-px grid only
      when the patch width is a multiple of 16 (the 4:2:0 chroma blocks are 16 px wide too),
      so it is kept then and dropped otherwise. Brightness, contrast and saturation are
      per-clip affine maps of each pixel: they scale a block edge, never move it.
    context: the level as it is, minus the blur. The jitter is one global colour map for face
      and background alike, so the face-to-scene mismatch in lighting and colour temperature
      that BG looks for survives it; flips and small rotations change nothing about a scene's
      light; a blur would wipe the background texture BG also reads.
    face: the level as it is."""
    from dataclasses import replace

    if view == "native":
        return replace(level, rotation_deg=0.0, perspective=0.0, p_perspective=0.0, p_blur=0.0,
                       p_flip=level.p_flip if width % 16 == 0 else 0.0)
    if view == "context":
        return replace(level, p_blur=0.0)
    return level


def augmenter_for(level: str, view: str = "face", width: int = 224) -> ClipAugmenter | None:
    """The augmenter of a recipe's level for a view of this width (view_level), or None for
    "none" (frames go to the model as uint8)."""
    if level not in AUGMENTATION_LEVELS:
        raise ValueError(f"unknown augmentation level {level!r}")
    return None if level == "none" else ClipAugmenter(view_level(AUGMENTATION_LEVELS[level], view, width))
