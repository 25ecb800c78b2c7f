"""The per-stage lock: a live owner refuses a second run, a dead one's lock is taken over."""
import json
import os
import socket
import subprocess
import sys

import pytest

from common.training.run_guard import StageLocked, acquire, release


def test_second_acquire_while_the_owner_lives_is_refused(tmp_path):
    lock = tmp_path / "x.lock"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        with pytest.raises(StageLocked, match=f"pid {sleeper.pid}"):
            acquire(lock, "cm stage1")
        assert json.loads(lock.read_text())["pid"] == sleeper.pid  # untouched
    finally:
        sleeper.kill()
        sleeper.wait()
    # Its owner is gone now: the lock is stale and taken over.
    assert acquire(lock, "cm stage1") == lock
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    release(lock)
    assert not lock.exists()


def test_garbled_lock_is_stale_and_release_leaves_others_locks(tmp_path):
    lock = tmp_path / "y.lock"
    lock.write_text("{half")
    acquire(lock, "tm stage2")
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    lock.write_text(json.dumps({"pid": 1, "host": socket.gethostname()}))  # not ours
    release(lock)
    assert lock.exists()
