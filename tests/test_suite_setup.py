"""The suite in a fresh clone: what it needs from outside the repository (the YuNet model, real
footage) it finds the way a user's run does, and without it those tests skip, saying why."""
import os
import subprocess
import sys
from pathlib import Path

from common.faces.detectors import MODEL_DIR_ENV, YUNET_FILE
from tests.conftest import REALDATA_ENV

ROOT = Path(__file__).resolve().parents[1]


def test_the_model_fixture_gives_the_yunet_file(yunet_model):
    """Run below with nothing set up, where it must skip; here it gets the real file."""
    assert yunet_model.name == YUNET_FILE and yunet_model.stat().st_size > 100_000


def test_a_clone_without_the_model_or_footage_skips_with_the_reason(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in (MODEL_DIR_ENV, REALDATA_ENV, "XDG_CACHE_HOME")}
    env["HOME"] = str(home)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                          "tests/test_suite_setup.py::test_the_model_fixture_gives_the_yunet_file",
                          "tests/test_real_footage.py::test_yunet_crops_of_real_ffpp_videos_are_faces"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    skips = [line for line in out.stdout.splitlines() if line.startswith("SKIPPED")]
    cache = home / ".cache" / "deepfake-suite" / "models"
    assert len(skips) == 2 and "2 skipped" in out.stdout, out.stdout
    assert skips[0].startswith("SKIPPED [1] tests/test_suite_setup.py")
    assert skips[0].endswith(f"needs the YuNet face model: no {YUNET_FILE} in {cache} (put it there, or set "
                             f"{MODEL_DIR_ENV} to a folder holding it; README, Tests)")
    assert skips[1].endswith(f"needs real FF++ footage: set {REALDATA_ENV} to a folder holding ffpp/ (README, Tests)")
    assert not (home / ".cache" / "deepfake-suite").exists()  # looked, downloaded nothing
