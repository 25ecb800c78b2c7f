"""RR student (resolution and upscaling), stage 1: FaceForensics++.

Specialist: multi-scale pyramid, upscaling residual, edge sharpness (Sobel), pixel interpolation ->
36 x 7 x 7.
Recipe (common/recipes.py): lr 1e-4, 6 epochs, cross-entropy with a class-balanced sampler, minimal
augmentation (rotation 5°, jitter 0.1, flip), no preprocessing.
Starts from the ImageNet backbone (or --init PATH).

    python train_rr_stage1_faceforensics.py --data /data/ff++
    python train_rr_stage1_faceforensics.py --data /data/ff++ --resume     # after an interruption
"""
import sys

from common.cli import run_stage

MODEL = "rr"
STAGE = "stage1_faceforensics"

if __name__ == "__main__":
    sys.exit(run_stage(MODEL, STAGE))
