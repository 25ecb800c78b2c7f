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
    from common.sample_data import make_all

    root = tmp_path_factory.mktemp("sample_data")
    make_all(root)
    return root
