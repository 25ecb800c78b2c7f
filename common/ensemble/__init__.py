"""The students together: loading them (ours or TorchScript), fitting the combiner, fusing
their scores, and the `python -m common.ensemble fit | predict` command.

Imports `common.training`, `common.faces`, `common.data` and the top-level base modules.
"""
