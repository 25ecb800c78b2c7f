"""Student model = torchvision backbone + one specialist + a small MLP head -> 2 logits.

The backbone looks at the centre frame of the sample; the specialist looks at the centre frame
(bg, cm, rr) or at the whole clip (tm, av). Their features are concatenated — pooled backbone
vector and the flattened C x 7 x 7 specialist map — and the head maps them to [real, fake].

`StudentModel.options` holds everything needed to rebuild the same architecture, so a checkpoint
stores only options + state_dict and `student_from_options` recreates the module.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torchvision import models as tvm

from common.errors import UserError
from common.preprocess import normalisation_constants, normalize_pixels
from common.recipes import CLIP_MODELS, DEFAULTS, MODEL_NAMES
from common.specialists import SPECIALISTS

# CLIP_MODELS (recipes): models whose samples are clips of clip_len frames
# AV's audio branch and audio-visual fusion (parameter-name prefixes): they see their first
# audio at stage 4 and get the recipe's av_audio_lr_multiplier there.
AV_AUDIO_FUSION = ("specialist.audio_stem.", "specialist.voice_frequency.", "specialist.temporal_audio.",
                   "specialist.av_correlation.")


def lr_multipliers(name: str, recipe) -> dict[str, float]:
    """Parameter-name prefix -> learning-rate factor for this model under this recipe."""
    if name != "av" or recipe.av_audio_lr_multiplier == 1.0:
        return {}
    return {prefix: recipe.av_audio_lr_multiplier for prefix in AV_AUDIO_FUSION}

# torchvision families whose classifier sits on a pooled conv feature map: dropping the
# children named in _HEAD_CHILDREN leaves a module that maps images to that feature map.
_FAMILIES = ("efficientnet", "mobilenet", "resnet", "resnext", "wide_resnet", "regnet", "convnext",
             "shufflenet", "mnasnet")
_HEAD_CHILDREN = ("avgpool", "fc", "classifier")
_HIDDEN = 512


def supported_backbones() -> list[str]:
    """torchvision classification models this module can use as a backbone."""
    return sorted(n for n in tvm.list_models(module=tvm) if n.startswith(_FAMILIES))


def _check_backbone_name(name: str) -> None:
    valid = supported_backbones()
    if name not in valid:
        examples = ", ".join(n for n in ("efficientnet_b0", "efficientnet_b4", "efficientnet_b7",
                                         "mobilenet_v3_small", "mobilenet_v3_large", "resnet18",
                                         "resnet50", "convnext_tiny") if n in valid)
        raise UserError(f"unknown backbone {name!r}; use a torchvision model such as {examples} "
                        f"({len(valid)} supported in all)")


def _classifier(name: str, pretrained: str) -> nn.Module:
    """The full torchvision classifier, with ImageNet weights when asked for."""
    if pretrained != "imagenet":
        return tvm.get_model(name, weights=None)
    try:
        weights = tvm.get_model_weights(name).DEFAULT
        return tvm.get_model(name, weights=weights)
    except Exception as err:  # offline, proxy, corrupt cache, hash mismatch: all the same to the user
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(
            f"could not load ImageNet weights for backbone {name!r} ({reason}); train from scratch "
            f"with --pretrained none or give a local state_dict with --pretrained PATH") from err


def _feature_extractor(classifier: nn.Module) -> nn.Sequential:
    """The classifier minus its pooling and classification head, keeping torchvision key names."""
    kept = OrderedDict((n, m) for n, m in classifier.named_children() if n not in _HEAD_CHILDREN)
    return nn.Sequential(kept)


def _load_backbone_file(body: nn.Sequential, path: str) -> None:
    """Load a backbone state_dict from `path` into `body`, strictly.

    Accepts the torchvision classifier's own state_dict (its head keys are ignored), a state_dict
    of the feature extractor alone, either one wrapped as {"state_dict": ...} / {"model": ...},
    and DataParallel's "module." prefix.
    """
    if not os.path.isfile(path):
        raise UserError(f"{path}: pretrained backbone file not found (use --pretrained imagenet|none|PATH)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"{path}: not a readable PyTorch state_dict ({type(err).__name__})") from err
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: expected a state_dict (name -> tensor) of the backbone")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if k.split(".", 1)[0] not in _HEAD_CHILDREN}
    expected = body.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                           for what, keys in (("missing", missing), ("unexpected", unexpected),
                                              ("wrong shape", wrong)) if keys)
        raise UserError(f"{path}: state_dict does not match this backbone ({detail})")
    body.load_state_dict(state, strict=True)


@torch.no_grad()
def _feature_width(body: nn.Module) -> int:
    """Channels of the backbone's feature map, found by a small dry forward pass."""
    was_training = body.training
    body.eval()
    try:
        return int(body(torch.zeros(1, 3, 64, 64)).shape[1])
    finally:
        body.train(was_training)


class StudentModel(nn.Module):
    """Backbone + specialist + head; forward(frames, mel, audio_missing) -> logits [B, 2]."""

    def __init__(self, name: str, backbone: nn.Sequential, backbone_dim: int, specialist: nn.Module,
                 dropout: float, options: dict[str, Any]) -> None:
        super().__init__()
        self.name = name
        self.options = dict(options)
        self.backbone = backbone
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.specialist = specialist
        self.backbone_dim = backbone_dim
        self.specialist_dim = specialist.out_channels * 7 * 7
        # uint8 frames (what the training DataLoader sends) are normalised here, on the device.
        scale, shift = normalisation_constants()
        self.register_buffer("pixel_scale", scale, persistent=False)
        self.register_buffer("pixel_shift", shift, persistent=False)
        width = backbone_dim + self.specialist_dim
        # LayerNorm first: the backbone vector and the specialist map live on different scales.
        self.head = nn.Sequential(
            nn.LayerNorm(width),
            nn.Dropout(dropout),
            nn.Linear(width, _HIDDEN),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(_HIDDEN, 2),
        )

    def forward(self, frames: torch.Tensor, mel: torch.Tensor | None = None,
                audio_missing: torch.Tensor | None = None) -> torch.Tensor:
        if frames.dim() == 4:  # a single frame per sample: [B, 3, S, S]
            frames = frames.unsqueeze(1)
        if frames.dim() != 5:
            raise ValueError(f"frames must be [B, T, 3, S, S], got {tuple(frames.shape)}")
        if frames.dtype == torch.uint8:
            frames = normalize_pixels(frames, self.pixel_scale, self.pixel_shift)
        centre = frames[:, frames.shape[1] // 2]
        vec = self.pool(self.backbone(centre)).flatten(1)
        if self.name == "av":
            spec = self.specialist(frames, mel, audio_missing)
        elif self.name == "tm":
            spec = self.specialist(frames)
        else:
            spec = self.specialist(centre)
        return self.head(torch.cat([vec, spec.flatten(1).to(vec.dtype)], dim=1))


def build_student(name: str, backbone: str = "efficientnet_b4", pretrained: str = "imagenet",
                  clip_len: int = DEFAULTS.clip_len, dropout: float = DEFAULTS.head_dropout) -> StudentModel:
    """Build a student for specialist `name` (one of MODEL_NAMES).

    pretrained: "imagenet" (torchvision weights; a failed download is a UserError, never a
    silent random init), "none" (random init) or the path of a backbone state_dict.
    """
    if name not in MODEL_NAMES:
        raise UserError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
    _check_backbone_name(backbone)
    if not isinstance(clip_len, int) or clip_len < 1:
        raise UserError(f"clip_len must be a positive integer, got {clip_len!r}")
    if name in CLIP_MODELS and clip_len < 2:
        raise UserError(f"model {name!r} works on motion and needs clip_len >= 2, got {clip_len}")
    if not 0.0 <= float(dropout) < 1.0:
        raise UserError(f"dropout must lie in [0, 1), got {dropout}")
    pretrained = str(pretrained)
    body = _feature_extractor(_classifier(backbone, "imagenet" if pretrained == "imagenet" else "none"))
    if pretrained not in ("imagenet", "none"):
        _load_backbone_file(body, pretrained)
    options = {"name": name, "backbone": backbone, "pretrained": "none", "clip_len": clip_len,
               "dropout": float(dropout)}
    return StudentModel(name, body, _feature_width(body), SPECIALISTS[name](), float(dropout), options)


def student_from_options(options: dict[str, Any]) -> StudentModel:
    """Rebuild the architecture recorded in `StudentModel.options` (weights come separately)."""
    known = {"name", "backbone", "pretrained", "clip_len", "dropout"}
    unknown = sorted(set(options) - known)
    if unknown or "name" not in options:
        raise UserError(f"model options are not from this version of the suite (keys: {sorted(options)})")
    return build_student(**{**options, "pretrained": "none"})
