"""The file board through which the service's workers agree on the model."""

import subprocess
import sys
import threading
import time

from serving.workers import WorkerBoard


def test_versions_lists_live_workers_and_forgets_dead_ones(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    WorkerBoard(tmp_path, pid=int(dead.stdout)).report("1")
    me = WorkerBoard(tmp_path)
    me.report("2")
    assert me.versions() == {me.pid: "2"}
    assert not (tmp_path / "workers" / f"{int(dead.stdout)}.version").exists()
    me.leave()
    assert me.versions() == {}


def test_a_reload_request_changes_the_token_and_wait_all_sees_every_worker(tmp_path):
    me = WorkerBoard(tmp_path)
    assert me.reload_token() is None
    me.request_reload()
    first = me.reload_token()
    me.request_reload()
    assert me.reload_token() not in (None, first)

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        me.report("2")
        peer = WorkerBoard(tmp_path, pid=other.pid)
        peer.report("1")
        assert me.wait_all("2", timeout_s=0.2) == {me.pid: "2", other.pid: "1"}
        threading.Timer(0.3, peer.report, args=("2",)).start()
        started = time.monotonic()
        assert me.wait_all("2", timeout_s=10) == {me.pid: "2", other.pid: "2"}
        assert 0.2 < time.monotonic() - started < 5
    finally:
        other.kill()
        other.wait()
