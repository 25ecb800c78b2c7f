"""AV student (audio-visual sync, with real audio), stage 1: FaceForensics++.

Specialist: lip-sync 5x5, voice frequency 7x7, audio-visual correlation 3x3, temporal audio
consistency 9x9 -> 48 x 7 x 7; input: a clip of consecutive face crops + the log-mel window of the
same time span.
Recipe (common/recipes.py): lr 1e-4, 6 epochs, cross-entropy with a class-balanced sampler, minimal
augmentation (rotation 5°, jitter 0.1, flip), no preprocessing.
Starts from the ImageNet backbone (or --init PATH).

    python train_av_stage1_faceforensics.py --data /data/ff++
    python train_av_stage1_faceforensics.py --data /data/ff++ --resume     # after an interruption
"""
import sys

from common.cli import run_stage

MODEL = "av"
STAGE = "stage1_faceforensics"

if __name__ == "__main__":
    sys.exit(run_stage(MODEL, STAGE))
