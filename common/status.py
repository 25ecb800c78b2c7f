"""`python -m common.status [--checkpoint-dir DIR]`: the training progress table.

The table itself is built in common/training/progress.py.
"""
import sys

from common.training.progress import main

if __name__ == "__main__":
    sys.exit(main())
