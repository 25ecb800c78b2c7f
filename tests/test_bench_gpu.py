"""bench_gpu: one call on a CUDA machine; here, without CUDA, it says so and exits 0, and its
code path (both precision modes, the torchrun part on gloo) runs on the CPU at toy sizes."""
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.benchmarks import bench_gpu

REPO = Path(__file__).resolve().parents[1]


def test_without_cuda_it_says_so_and_exits_0(tmp_path):
    out = tmp_path / "gpu.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "tests.benchmarks.bench_gpu", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "no CUDA device"
    assert not out.exists()


def test_the_measurement_runs_end_to_end_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    res = bench_gpu.main([
        "--cpu-smoke", "--backbone", "mobilenet_v3_small", "--image-size", "32", "--batch-size", "2",
        "--steps", "1", "--warmup", "1", "--rounds", "2", "--videos", "2", "--points", "2",
        "--distinct-batches", "2", "--cache-dir", str(tmp_path / "cache"), "--gpus", "2",
        "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))  # the file is the result
    single, multi = res["figures"]["single_gpu"], res["figures"]["multi_gpu"]
    for mode in ("fp32", "amp"):
        assert single[mode]["images_per_s"] > 0 and single[mode]["peak_memory_gib"] is None
    assert single["amp_vs_fp32"] > 0 and 0 < single["augment_fraction_of_amp_step"]
    assert multi.get("error") is None, multi.get("error")
    assert multi["gpus"] == 2 and multi["images_per_s"] > 0 and multi["scaling_efficiency"] > 0
    assert isinstance(res["pass"]["amp_vs_fp32"], bool) and res["conditions"]["smoke_on_cpu"]
