"""One training stage: orchestration and its data, the engine, augmentation, metrics,
checkpoints, run files and locks, torchrun, the progress table and plots.

Imports `common.faces`, `common.data` and the top-level base modules, nothing above.
"""
