"""AV student (audio-visual sync, with real audio), stage 4: DFDC.

Specialist: lip-sync 5x5, voice frequency 7x7, audio-visual correlation 3x3, temporal audio
consistency 9x9 -> 48 x 7 x 7; input: a clip of consecutive face crops + the log-mel window of the
same time span.
Recipe (common/recipes.py): lr 1e-5 (audio branch and fusion 10x), 2 epochs per chunk over parts
9,8,3,5,7,2,6,4,1,0, cross-entropy weighted by each chunk's label counts, maximum augmentation
(rotation 20°, jitter 0.2, perspective 0.2 (p 0.5), blur (p 0.3), flip), CLAHE + bilateral filter.
Starts from av_stage2_celebdf.pt, which must be a finished stage (or --init PATH). Also writes av_model_student.pt.

    python train_av_stage4_dfdc.py --data /data/dfdc
    python train_av_stage4_dfdc.py --data /data/dfdc --resume     # after an interruption
"""
import sys

from common.cli import run_stage

MODEL = "av"
STAGE = "stage4_dfdc"

if __name__ == "__main__":
    sys.exit(run_stage(MODEL, STAGE))
