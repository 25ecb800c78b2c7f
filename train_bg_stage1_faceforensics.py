"""BG student (background and lighting), stage 1: FaceForensics++.

Specialist: background texture 7x7, lighting direction 5x5, shadow consistency 9x9, colour
temperature 3x3 -> 44 x 7 x 7.
Recipe (common/recipes.py): lr 1e-4, 6 epochs, cross-entropy with a class-balanced sampler, minimal
augmentation (rotation 5°, jitter 0.1, flip), no preprocessing.
Starts from the ImageNet backbone (or --init PATH).

    python train_bg_stage1_faceforensics.py --data /data/ff++
    python train_bg_stage1_faceforensics.py --data /data/ff++ --resume     # after an interruption
"""
import sys

from common.cli import run_stage

MODEL = "bg"
STAGE = "stage1_faceforensics"

if __name__ == "__main__":
    sys.exit(run_stage(MODEL, STAGE))
