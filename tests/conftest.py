"""Test-wide settings: no test may reach the network, and all of them run on the CPU."""
import os
from pathlib import Path

import pytest
import torch

# One intra-op thread for the whole suite: its tensors are tiny, and on a 2-core machine two
# spinning OpenMP threads stall each other (and anything else running) far more than they help.
torch.set_num_threads(1)
# ...and the same in the scripts the tests start, so a run split across a killed subprocess
# and an in-process resume computes with the same thread count (bit-identical weights).
os.environ["OMP_NUM_THREADS"] = "1"

# Point torch's weight cache at an empty place so a stray `pretrained="imagenet"` fails
# loudly instead of quietly using (or downloading) weights.
os.environ.setdefault("TORCH_HOME", os.path.join(os.path.dirname(__file__), ".no-torch-home"))
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

# Scripts the tests start get no network either: a download attempt fails at once (closed port).
for _proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
    os.environ[_proxy] = "http://127.0.0.1:9"
os.environ["no_proxy"] = os.environ["NO_PROXY"] = "localhost,127.0.0.1,::1"

# Real FF++ footage for tests/test_real_footage.py: a folder holding ffpp/ in the official layout.
REALDATA_ENV = "DEEPFAKE_REALDATA_DIR"


def find_yunet_model() -> tuple[Path | None, str]:
    """The YuNet model where a user's run finds it ($DEEPFAKE_MODEL_DIR, else the per-user model
    cache: the project's own lookup, with its download switched off), else None and why."""
    from common.errors import UserError
    from common.faces.detectors import MODEL_DIR_ENV, YUNET_FILE, model_cache_dir, resolve_yunet_model

    try:
        return resolve_yunet_model(download=False), ""
    except UserError:
        return None, (f"needs the YuNet face model: no {YUNET_FILE} in {model_cache_dir()} (put it there, "
                      f"or set {MODEL_DIR_ENV} to a folder holding it; README, Tests)")


@pytest.fixture(scope="session")
def yunet_model() -> Path:
    """The YuNet model file; tests (and the fixtures) that detect with YuNet skip without it."""
    path, why = find_yunet_model()
    if path is None:
        pytest.skip(why)
    return path


def realdata_dir() -> tuple[Path | None, str]:
    """$DEEPFAKE_REALDATA_DIR when it holds ffpp/, else None and why."""
    value = os.environ.get(REALDATA_ENV)
    if not value:
        return None, f"needs real FF++ footage: set {REALDATA_ENV} to a folder holding ffpp/ (README, Tests)"
    if not (Path(value).expanduser() / "ffpp").is_dir():
        return None, f"{REALDATA_ENV}={value} holds no ffpp/ folder"
    return Path(value).expanduser(), ""


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    import socket

    real_connect = socket.socket.connect

    def local_only(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in ("127.0.0.1", "localhost", "::1") and "/" not in host:
            raise RuntimeError(f"tests must not use the network (tried {address!r})")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", local_only)


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory):
    """The three tiny official-layout trees of `python -m common.sample_data`, made once per run."""
    from common.data.synthetic import make_all

    root = tmp_path_factory.mktemp("sample_data")
    make_all(root)
    return root
