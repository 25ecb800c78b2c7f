"""Student models: forward/backward, rebuild from options, pretrained weights and their errors."""
import json

import pytest
import numpy as np
import torch
from torchvision import models as tvm

from common.errors import UserError
from common.model import CLIP_MODELS, MODEL_NAMES, StudentModel, build_student, student_from_options

S = 64
BACKBONE = "mobilenet_v3_small"


def batch(name, b=2, t=3):
    frames = torch.randn(b, t if name in CLIP_MODELS else 1, 3, S, S)
    return frames, torch.randn(b, 1, 64, 32), torch.tensor([0.0, 1.0])[:b]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_backward_reaches_head_backbone_and_specialist(name):
    torch.manual_seed(0)
    model = build_student(name, backbone=BACKBONE, pretrained="none", clip_len=3)
    assert isinstance(model, StudentModel) and model.name == name
    logits = model(*batch(name))
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    for part in (model.head, model.specialist, model.backbone):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads), f"{name}: a {type(part).__name__} parameter got no gradient"
        assert sum(g.abs().sum() for g in grads) > 0


def test_head_width_is_backbone_plus_specialist_features():
    model = build_student("cm", backbone="resnet18", pretrained="none")
    assert model.backbone_dim == 512 and model.specialist_dim == 1960
    assert model.head[0].normalized_shape == (512 + 1960,)


def test_frame_models_use_only_the_centre_frame():
    torch.manual_seed(0)
    model = build_student("bg", backbone=BACKBONE, pretrained="none").eval()
    frames = torch.randn(1, 3, 3, S, S)
    changed = frames.clone()
    changed[:, 0] += 1.0
    with torch.no_grad():
        assert torch.equal(model(frames), model(changed))
        assert torch.equal(model(frames), model(frames[:, 1]))  # a bare [B, 3, S, S] is one frame


def test_av_without_mel_is_treated_as_missing_audio():
    torch.manual_seed(0)
    model = build_student("av", backbone=BACKBONE, pretrained="none").eval()
    frames = torch.randn(2, 4, 3, S, S)
    with torch.no_grad():
        a = model(frames)
        b = model(frames, torch.zeros(2, 1, 64, 32), torch.ones(2))
        c = model(frames, torch.randn(2, 1, 64, 32), torch.zeros(2))
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(b, c)


def test_channels_last_forward():
    model = build_student("rr", backbone=BACKBONE, pretrained="none").eval()
    frames = torch.randn(2, 1, 3, S, S)
    with torch.no_grad():
        ref = model(frames)
        model = model.to(memory_format=torch.channels_last)
        out = model(frames)
    assert torch.allclose(ref, out, atol=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_channels_last_as_training_does_it(name):
    """The stage's CUDA layout on every model, TM's Conv3d included (Module.to refuses it)."""
    from common.training.engine import to_channels_last

    torch.manual_seed(0)
    model = build_student(name, backbone=BACKBONE, pretrained="none", clip_len=3).eval()
    frames, mel, missing = batch(name)
    with torch.no_grad():
        ref = model(frames, mel=mel, audio_missing=missing)
        out = to_channels_last(model)(frames, mel=mel, audio_missing=missing)
    weights = [p for p in model.parameters() if p.dim() == 4]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    assert torch.allclose(ref, out, atol=1e-5)


@pytest.mark.parametrize("name", ["tm", "bg"])
def test_options_rebuild_the_same_architecture(name):
    model = build_student(name, backbone="resnet18", pretrained="none", clip_len=4, dropout=0.1)
    opts = json.loads(json.dumps(model.options))  # checkpoints keep them as plain data
    assert opts == {"name": name, "backbone": "resnet18", "pretrained": "none", "clip_len": 4, "dropout": 0.1}
    again = student_from_options(opts)
    a, b = model.state_dict(), again.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    again.load_state_dict(a)  # strict by default
    assert again.options == model.options
    with pytest.raises(UserError):
        student_from_options({**opts, "colour": "blue"})


def test_imagenet_download_failure_is_a_user_error(monkeypatch):
    def offline(self, *args, **kwargs):
        raise RuntimeError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(tvm._api.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(UserError) as info:
        build_student("bg", backbone=BACKBONE, pretrained="imagenet")
    msg = str(info.value)
    assert "--pretrained none" in msg and "--pretrained PATH" in msg and BACKBONE in msg
    assert "\n" not in msg


def test_imagenet_uses_torchvision_weights(monkeypatch):
    reference = tvm.get_model(BACKBONE, weights=None).state_dict()
    seen = []

    def fake_weights(self, *args, **kwargs):
        seen.append(self)
        return reference

    monkeypatch.setattr(tvm._api.WeightsEnum, "get_state_dict", fake_weights)
    model = build_student("bg", backbone=BACKBONE, pretrained="imagenet")
    assert seen == [tvm.get_model_weights(BACKBONE).DEFAULT]
    assert torch.equal(model.backbone.state_dict()["features.0.0.weight"], reference["features.0.0.weight"])


def test_pretrained_path_round_trip(tmp_path):
    torch.manual_seed(1)
    source = tvm.get_model("resnet18", weights=None)
    full = tmp_path / "resnet18_classifier.pth"
    torch.save(source.state_dict(), full)  # a torchvision checkpoint, fc included
    model = build_student("cm", backbone="resnet18", pretrained=str(full))
    assert model.options["pretrained"] == "none"
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key
    # The extractor's own state_dict, wrapped the way training scripts often save it.
    wrapped = tmp_path / "backbone.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.backbone.state_dict().items()}}, wrapped)
    again = build_student("rr", backbone="resnet18", pretrained=str(wrapped))
    key = "layer4.1.conv2.weight"
    assert torch.equal(again.backbone.state_dict()[key], source.state_dict()[key])


def test_pretrained_path_errors_name_the_file(tmp_path):
    other = tmp_path / "mobilenet.pth"
    torch.save(tvm.get_model(BACKBONE, weights=None).state_dict(), other)
    with pytest.raises(UserError, match="mobilenet.pth"):
        build_student("bg", backbone="resnet18", pretrained=str(other))
    with pytest.raises(UserError, match="nothing.pth"):
        build_student("bg", backbone="resnet18", pretrained=str(tmp_path / "nothing.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pth"):
        build_student("bg", backbone="resnet18", pretrained=str(junk))


def test_unknown_names_are_user_errors():
    with pytest.raises(UserError, match="efficientnet_b4"):
        build_student("bg", backbone="efficientnet_b99", pretrained="none")
    with pytest.raises(UserError, match="bg"):
        build_student("xx", backbone=BACKBONE, pretrained="none")
    with pytest.raises(UserError, match="clip_len"):
        build_student("tm", backbone=BACKBONE, pretrained="none", clip_len=1)


def test_uint8_frames_are_normalised_inside_the_model():
    from common.preprocess import ClipTransform

    torch.manual_seed(0)
    model = build_student("rr", backbone=BACKBONE, pretrained="none").eval()
    clip = np.random.default_rng(0).integers(0, 256, (1, S, S, 3), dtype=np.uint8)
    as_float = ClipTransform(S)(clip)[None]
    as_uint8 = ClipTransform(S, normalize=False)(clip)[None]
    assert as_uint8.dtype == torch.uint8 and as_float.dtype == torch.float32
    with torch.no_grad():
        assert torch.allclose(model(as_uint8), model(as_float), atol=1e-5)
    assert not {"pixel_scale", "pixel_shift"} & set(model.state_dict())  # checkpoints unchanged
