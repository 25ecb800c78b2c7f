"""CM student (compression artifacts), stage 4: DFDC.

Specialist: DCT coefficients on 8x8 blocks, quantization artifacts 4x4/2, block boundaries 3x3,
compression level 5x5 -> 40 x 7 x 7.
Recipe (common/recipes.py): lr 1e-5, 2 epochs per chunk over parts 9,8,3,5,7,2,6,4,1,0,
cross-entropy weighted by each chunk's label counts, maximum augmentation (rotation 20°, jitter 0.2,
perspective 0.2 (p 0.5), blur (p 0.3), flip), CLAHE + bilateral filter.
Starts from cm_stage2_celebdf.pt, which must be a finished stage (or --init PATH). Also writes cm_model_student.pt.

    python train_cm_stage4_dfdc.py --data /data/dfdc
    python train_cm_stage4_dfdc.py --data /data/dfdc --resume     # after an interruption
"""
import sys

from common.cli import run_stage

MODEL = "cm"
STAGE = "stage4_dfdc"

if __name__ == "__main__":
    sys.exit(run_stage(MODEL, STAGE))
