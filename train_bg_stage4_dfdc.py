"""BG student (background and lighting), stage 4: DFDC.

Specialist: background texture 7x7, lighting direction 5x5, shadow consistency 9x9, colour
temperature 3x3 -> 44 x 7 x 7.
Recipe (common/recipes.py): lr 1e-5, 2 epochs per chunk over parts 9,8,3,5,7,2,6,4,1,0,
cross-entropy weighted by each chunk's label counts, maximum augmentation (rotation 20°, jitter 0.2,
perspective 0.2 (p 0.5), blur (p 0.3), flip), CLAHE + bilateral filter.
Starts from bg_stage2_celebdf.pt, which must be a finished stage (or --init PATH). Also writes bg_model_student.pt.

    python train_bg_stage4_dfdc.py --data /data/dfdc
    python train_bg_stage4_dfdc.py --data /data/dfdc --resume     # after an interruption
"""
import sys

from common.cli import run_stage

MODEL = "bg"
STAGE = "stage4_dfdc"

if __name__ == "__main__":
    sys.exit(run_stage(MODEL, STAGE))
