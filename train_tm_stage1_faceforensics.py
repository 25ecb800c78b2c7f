"""TM student (temporal consistency), stage 1: FaceForensics++.

Specialist: frame consistency, motion flow, temporal artifacts, flow validator -> 52 x 7 x 7; input:
a clip of consecutive face crops.
Recipe (common/recipes.py): lr 1e-4, 6 epochs, cross-entropy with a class-balanced sampler, minimal
augmentation (rotation 5°, jitter 0.1, flip), no preprocessing.
Starts from the ImageNet backbone (or --init PATH).

    python train_tm_stage1_faceforensics.py --data /data/ff++
    python train_tm_stage1_faceforensics.py --data /data/ff++ --resume     # after an interruption
"""
import sys

from common.cli import run_stage

MODEL = "tm"
STAGE = "stage1_faceforensics"

if __name__ == "__main__":
    sys.exit(run_stage(MODEL, STAGE))
