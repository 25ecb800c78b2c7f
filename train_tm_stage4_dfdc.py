"""TM student (temporal consistency), stage 4: DFDC.

Specialist: frame consistency, motion flow, temporal artifacts, flow validator -> 52 x 7 x 7; input:
a clip of consecutive face crops.
Recipe (common/recipes.py): lr 1e-5, 2 epochs per chunk over parts 9,8,3,5,7,2,6,4,1,0,
cross-entropy weighted by each chunk's label counts, maximum augmentation (rotation 20°, jitter 0.2,
perspective 0.2 (p 0.5), blur (p 0.3), flip), CLAHE + bilateral filter.
Starts from tm_stage2_celebdf.pt, which must be a finished stage (or --init PATH). Also writes tm_model_student.pt.

    python train_tm_stage4_dfdc.py --data /data/dfdc
    python train_tm_stage4_dfdc.py --data /data/dfdc --resume     # after an interruption
"""
import sys

from common.cli import run_stage

MODEL = "tm"
STAGE = "stage4_dfdc"

if __name__ == "__main__":
    sys.exit(run_stage(MODEL, STAGE))
