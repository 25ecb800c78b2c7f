"""BG student (background and lighting), stage 2: Celeb-DF v2.

Specialist: background texture 7x7, lighting direction 5x5, shadow consistency 9x9, colour
temperature 3x3 -> 44 x 7 x 7.
Recipe (common/recipes.py): lr 5e-5, 5 epochs, focal loss (alpha 0.25 on FAKE, gamma 2), moderate
augmentation (rotation 10°, jitter 0.2, flip), CLAHE.
Starts from bg_stage1_faceforensics.pt, which must be a finished stage (or --init PATH).
The official test list is evaluated once at the end, as a report only.

    python train_bg_stage2_celebdf.py --data /data/celeb-df-v2
    python train_bg_stage2_celebdf.py --data /data/celeb-df-v2 --resume     # after an interruption
"""
import sys

from common.cli import run_stage

MODEL = "bg"
STAGE = "stage2_celebdf"

if __name__ == "__main__":
    sys.exit(run_stage(MODEL, STAGE))
