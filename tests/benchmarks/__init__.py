"""Throughput and memory benchmarks (not collected by pytest: the files are bench_*.py).

Each one runs as `python -m tests.benchmarks.bench_NAME` (or `python tests/benchmarks/bench_NAME.py`)
and prints one JSON object: its figures, as ratios of things measured side by side in the same
run, and the conditions they were measured under. See README, "Performance".
"""
