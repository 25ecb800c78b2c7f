"""Test-wide settings: no test may reach the network, and all of them run on the CPU."""
import os

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


def shared_dir(name: str):
    """../shared/<name> beside the repository (CI), else /work/shared/<name>; None if absent."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    for base in (repo.parent / "shared", repo.parents[1] / "shared", Path("/work/shared")):
        if (base / name).is_dir():
            return base / name
    return None


def _yunet_model_cache() -> None:
    """YuNet is the default detector: tests use the real model from ../shared/models, copied
    into a private model cache (DEEPFAKE_MODEL_DIR, inherited by the scripts the tests start),
    so nothing is ever downloaded."""
    import shutil
    import tempfile

    from common.faces.detectors import MODEL_DIR_ENV, YUNET_FILE

    models = shared_dir("models")
    if models is None or MODEL_DIR_ENV in os.environ:
        return
    cache = tempfile.mkdtemp(prefix="yunet-cache-")
    shutil.copy(models / "face_detection_yunet.onnx", os.path.join(cache, YUNET_FILE))
    os.environ[MODEL_DIR_ENV] = cache


_yunet_model_cache()


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
