"""CM student (compression artifacts), stage 1: FaceForensics++.

Specialist: DCT coefficients on 8x8 blocks, quantization artifacts 4x4/2, block boundaries 3x3,
compression level 5x5 -> 40 x 7 x 7.
Recipe (common/recipes.py): lr 1e-4, 6 epochs, cross-entropy with a class-balanced sampler, minimal
augmentation (rotation 5°, jitter 0.1, flip), no preprocessing.
Starts from the ImageNet backbone (or --init PATH).

    python train_cm_stage1_faceforensics.py --data /data/ff++
    python train_cm_stage1_faceforensics.py --data /data/ff++ --resume     # after an interruption
"""
import sys

from common.cli import run_stage

MODEL = "cm"
STAGE = "stage1_faceforensics"

if __name__ == "__main__":
    sys.exit(run_stage(MODEL, STAGE))
