"""``recsys stop`` stops everything the project started under its home: the Dagster
UI, the MLflow UI and tracking server, and the stream consumer included (real
processes, in their own process groups)."""

import os
import subprocess
import sys
import time

from infra import redis_server
from infra.processes import free_port, pid_alive
from infra.settings import Settings
from orchestration.cli import main, stop_all


def test_stop_stops_the_uis_and_says_what_it_stopped(tmp_path, capsys, monkeypatch):
    settings = Settings(home=tmp_path / "home")
    monkeypatch.setenv("RECSYS_HOME", str(settings.home))
    env = {**os.environ, "RECSYS_HOME": str(settings.home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    commands = {"ui": ["--port", str(free_port())], "mlflow-ui": ["--port", str(free_port())],
                "mlflow-server": ["--port", str(free_port())], "consume": []}
    wrappers = {name: subprocess.Popen(
        [sys.executable, "-m", "orchestration.cli", name, *args],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        for name, args in commands.items()}
    try:
        # Four cold starts of the stack at once (~18 s of imports each) on two cores,
        # slower still when the machine is shared: a deadline, not a speed check.
        deadline = time.monotonic() + 180
        while not (all(settings.pid_file(n).exists() for n in wrappers)
                   and redis_server.running(settings)):
            assert time.monotonic() < deadline, "the UIs did not start"
            time.sleep(0.2)
        pids = {n: int(settings.pid_file(n).read_text()) for n in wrappers}
        time.sleep(3)  # let them get under way (dagster dev starts its daemon)
        assert all(pid_alive(pid) for pid in pids.values())
        assert main(["stop"]) == 0
        # The consumer started this home's embedded Redis (the stream is in it).
        assert capsys.readouterr().out.strip() == (
            "stopped: ui, mlflow-ui, mlflow-server, consume, redis")
        for name, wrapper in wrappers.items():
            wrapper.wait(timeout=30)  # the foreground command returns with its child
            assert not pid_alive(pids[name])
            assert not settings.pid_file(name).exists()
        assert main(["stop"]) == 0
        assert capsys.readouterr().out.strip() == "nothing was running"
    finally:
        stop_all(settings)  # whatever a failed assertion left running
        for wrapper in wrappers.values():
            if wrapper.poll() is None:
                os.killpg(wrapper.pid, 9)
