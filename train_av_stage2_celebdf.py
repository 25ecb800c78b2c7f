"""AV student (audio-visual sync, with real audio), stage 2: Celeb-DF v2.

Specialist: lip-sync 5x5, voice frequency 7x7, audio-visual correlation 3x3, temporal audio
consistency 9x9 -> 48 x 7 x 7; input: a clip of consecutive face crops + the log-mel window of the
same time span.
Recipe (common/recipes.py): lr 5e-5, 5 epochs, focal loss (alpha 0.25 on FAKE, gamma 2), moderate
augmentation (rotation 10°, jitter 0.2, flip), CLAHE.
Starts from av_stage1_faceforensics.pt, which must be a finished stage (or --init PATH).
The official test list is evaluated once at the end, as a report only.

    python train_av_stage2_celebdf.py --data /data/celeb-df-v2
    python train_av_stage2_celebdf.py --data /data/celeb-df-v2 --resume     # after an interruption
"""
import sys

from common.cli import run_stage

MODEL = "av"
STAGE = "stage2_celebdf"

if __name__ == "__main__":
    sys.exit(run_stage(MODEL, STAGE))
