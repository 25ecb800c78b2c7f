"""The three stage recipes, as data: the table in TRAINING_STATUS.md lives here and only here.

Class imbalance is corrected once per stage, never twice:
  stage 1 (FF++, ~1 real : 4 fakes): plain cross-entropy + a class-balanced sampler.
  stage 2 (Celeb-DF, ~1 : 6.5):      focal loss; its alpha (0.25 on the fake class) is the correction.
  stage 4 (DFDC, ~1 : 5.2 per part): cross-entropy weighted by each chunk's label counts; no sampler.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

MODEL_NAMES = ("bg", "av", "cm", "rr", "tm")  # the five students, in the status table's order
CLIP_MODELS = ("tm", "av")  # models whose samples are clips of clip_len frames (the rest: one frame)
DFDC_CHUNK_ORDER = (9, 8, 3, 5, 7, 2, 6, 4, 1, 0)  # most to least balanced part


@dataclass(frozen=True)
class Defaults:
    """The shared defaults of every command (stage scripts, extraction, ensemble, evaluate)."""
    image_size: int = 224            # face crop side, pixels
    frames_per_video: int = 32       # sample points per video
    clip_len: int = 8                # consecutive frames per sample point (TM/AV clips)
    batch_size: int = 32             # per GPU
    workers: int = 8                 # DataLoader workers per GPU
    seed: int = 42
    backbone: str = "efficientnet_b4"
    face_detector: str = "yunet"
    head_dropout: float = 0.3        # the student's MLP head


DEFAULTS = Defaults()


@dataclass(frozen=True)
class Preprocessing:
    """The deterministic filters of the CLAHE / CLAHE + bilateral preprocessing (applied once,
    at extraction: common.preprocess)."""
    clahe_clip_limit: float = 2.0
    clahe_tile: int = 8              # tiles per side
    bilateral_diameter: int = 5
    bilateral_sigma_color: float = 50.0
    bilateral_sigma_space: float = 50.0


PREPROCESSING = Preprocessing()


@dataclass(frozen=True)
class AugmentLevel:
    """The random transforms of one augmentation level, drawn once per clip (common.training.augment).

    Hue is never jittered: skin hue is evidence.
    """
    rotation_deg: float            # rotation uniform in [-rotation_deg, rotation_deg]
    jitter: float                  # brightness, contrast, saturation factors uniform in [1 - j, 1 + j]
    p_flip: float = 0.5            # horizontal flip
    perspective: float = 0.0       # each corner moves inwards by up to this fraction of the half side
    p_perspective: float = 0.0
    p_blur: float = 0.0            # Gaussian blur ...
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # ... with sigma uniform in this range
    blur_kernel: int = 5           # ... and this kernel side (odd)


AUGMENTATION_LEVELS: dict[str, AugmentLevel] = {
    "none": AugmentLevel(rotation_deg=0.0, jitter=0.0, p_flip=0.0),
    "minimal": AugmentLevel(rotation_deg=5.0, jitter=0.1),     # stage 1
    "moderate": AugmentLevel(rotation_deg=10.0, jitter=0.2),   # stage 2
    "maximum": AugmentLevel(rotation_deg=20.0, jitter=0.2,     # stage 4
                            perspective=0.2, p_perspective=0.5, p_blur=0.3),
}


@dataclass(frozen=True)
class StageRecipe:
    stage: str               # "stage1_faceforensics": file names derive from it
    number: int              # 1, 2 or 4
    dataset: str             # index name in common.data.datasets
    title: str
    lr: float
    epochs: int              # per chunk on DFDC
    loss: str                # "ce" | "focal" | "weighted_ce"
    augmentation: str        # a key of AUGMENTATION_LEVELS: "minimal" | "moderate" | "maximum"
    preprocessing: str       # "none" | "clahe" | "clahe_bilateral"
    balanced_sampler: bool
    previous: str | None     # stage whose best checkpoint this one starts from
    chunks: tuple[int, ...] | None = None
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    lr_floor: float = 0.01           # the cosine ends at lr * lr_floor
    grad_clip: float = 1.0           # max global gradient norm
    focal_alpha: float = 0.25        # focal loss only: weight of the FAKE class (REAL gets 1 - alpha)
    focal_gamma: float = 2.0         # focal loss only: focusing exponent
    # AV only: factor on `lr` for the audio branch and the audio-visual fusion layers
    # (model.AV_AUDIO_FUSION). Stages 1-2 carry no audio, so stage 4 is their first real signal.
    av_audio_lr_multiplier: float = 1.0

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def augment_level(self) -> AugmentLevel:
        return AUGMENTATION_LEVELS[self.augmentation]


RECIPES: dict[str, StageRecipe] = {
    "stage1_faceforensics": StageRecipe(
        stage="stage1_faceforensics", number=1, dataset="faceforensics", title="FaceForensics++",
        lr=1e-4, epochs=6, loss="ce", augmentation="minimal", preprocessing="none",
        balanced_sampler=True, previous=None),
    "stage2_celebdf": StageRecipe(
        stage="stage2_celebdf", number=2, dataset="celebdf", title="Celeb-DF v2",
        lr=5e-5, epochs=5, loss="focal", augmentation="moderate", preprocessing="clahe",
        balanced_sampler=False, previous="stage1_faceforensics"),
    "stage4_dfdc": StageRecipe(
        stage="stage4_dfdc", number=4, dataset="dfdc", title="DFDC",
        lr=1e-5, epochs=2, loss="weighted_ce", augmentation="maximum",
        preprocessing="clahe_bilateral", balanced_sampler=False, previous="stage2_celebdf",
        chunks=DFDC_CHUNK_ORDER, av_audio_lr_multiplier=10.0),
}

STAGES = tuple(RECIPES)
FINAL_STAGE = "stage4_dfdc"


def script_name(model: str, stage: str) -> str:
    return f"train_{model}_{stage}.py"


_LOSS_WORDS = {"ce": "cross-entropy", "focal": "focal loss", "weighted_ce": "cross-entropy weighted by each chunk's label counts"}
_PREPROCESSING_WORDS = {"none": "no preprocessing", "clahe": "CLAHE", "clahe_bilateral": "CLAHE + bilateral filter"}


def _augmentation_words(name: str) -> str:
    level = AUGMENTATION_LEVELS[name]
    parts = [f"rotation {level.rotation_deg:g}°", f"jitter {level.jitter:g}"]
    if level.p_perspective:
        parts.append(f"perspective {level.perspective:g} (p {level.p_perspective:g})")
    if level.p_blur:
        parts.append(f"blur (p {level.p_blur:g})")
    if level.p_flip:
        parts.append("flip")
    return f"{name} augmentation ({', '.join(parts)})"


def _lr_words(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-")  # 1e-4, 5e-5


def recipe_summary(model: str, stage: str) -> str:
    """One sentence of a model's stage recipe, from the numbers above; the stage scripts'
    docstrings carry it verbatim (tests/test_cli.py checks that they still do)."""
    r = RECIPES[stage]
    epochs = f"{r.epochs} epochs" + (f" per chunk over parts {','.join(map(str, r.chunks))}" if r.chunks else "")
    loss = _LOSS_WORDS[r.loss]
    if r.loss == "focal":
        loss += f" (alpha {r.focal_alpha:g} on FAKE, gamma {r.focal_gamma:g})"
    if r.balanced_sampler:
        loss += " with a class-balanced sampler"
    audio = (f" (audio branch and fusion {r.av_audio_lr_multiplier:g}x)"
             if model == "av" and r.av_audio_lr_multiplier != 1 else "")
    return (f"Recipe (common/recipes.py): lr {_lr_words(r.lr)}{audio}, {epochs}, {loss}, "
            f"{_augmentation_words(r.augmentation)}, {_PREPROCESSING_WORDS[r.preprocessing]}.")
