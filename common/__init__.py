"""Shared machinery of the deepfake-detection training suite (see README.md)."""
