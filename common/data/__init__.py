"""Datasets as files: the three official layouts and their indexers, group-keeping splits,
video records, the samples a model trains on, audio, generated sample trees, atomic writes.

Imports only the top-level base modules of `common` (errors, recipes, preprocess).
"""
