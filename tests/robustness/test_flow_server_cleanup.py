"""A flow script killed mid-run leaves nothing behind: SIGTERM, ``kill -9`` and Ctrl-C (SIGINT) of
``python flows/pipeline.py`` end the Prefect API server it started (uvicorn on a loopback port), and every
other process under it; a script that finishes stops its server too.

The script runs in a tiny scratch project with no ``PREFECT_API_URL``, so it starts a server of its own
(:func:`flows.flow_server`); it is killed once the flow run has begun (its stages still to come), and then,
within a bounded wait, no process it had started may be running and the server's port must be closed.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .support import PYTHON, REPO, make_project, subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.integration]

#: Bounds: the script to reach its flow run (imports + server start + database migration on 2 shared
#: cores), and everything to be gone after the kill.
START_S = 240
GONE_S = 30


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> tuple[Path, Path]:
    """(a tiny project, a PREFECT_HOME the tests of this module share: later starts skip the migration)."""
    base = tmp_path_factory.mktemp("flow-kill")
    return make_project(base / "project"), base / "prefect"


def _alive(pid: int) -> bool:
    """Running, not a zombie (a zombie has exited: it merely waits to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Script:
    """``python flows/pipeline.py`` running in its own session, its output collected line by line."""

    def __init__(self, root: Path, prefect_home: Path, *args: str):
        env = subprocess_env(PREFECT_HOME=str(prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                             PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="200")
        env.pop("PREFECT_API_URL", None)
        args = args or ("--target", "evaluate")
        cmd = [PYTHON, str(REPO / "flows/pipeline.py"), "--root", str(root), *args]
        self.proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)[-6000:]

    def wait_for_flow_run(self) -> tuple[int, int, list[int]]:
        """Wait until the flow run has begun -> (server pid, server port, every descendant's pid)."""
        from flows import descendants

        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            assert rc is None, f"the script ended early ({rc}):\n{self.output()}"
            if any("Beginning flow run" in line for line in self.lines):
                below = descendants(self.proc.pid)
                servers = [p for p in below if "uvicorn" in _cmdline(p)]
                assert len(servers) == 1, f"not one uvicorn under the script: {[_cmdline(p) for p in below]}"
                port = int(re.search(r"--port (\d+)", _cmdline(servers[0])).group(1))
                assert _listening(port), f"the server does not listen on {port}"
                return servers[0], port, below
            time.sleep(0.1)
        raise AssertionError(f"no flow run within {START_S} s:\n{self.output()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=GONE_S)
        self._reader.join(timeout=5)


def _assert_nothing_left(pids: list[int], port: int, script: Script) -> float:
    """Every pid gone and the port closed within :data:`GONE_S` -> the seconds it took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < GONE_S:
        left = [p for p in pids if _alive(p)]
        if not left and not _listening(port):
            return time.monotonic() - t0
        time.sleep(0.1)
    left = {p: _cmdline(p) for p in pids if _alive(p)}
    raise AssertionError(f"still running {GONE_S} s after the script ended: {left}, port {port} "
                         f"listening={_listening(port)}\n{script.output()}")


def _cleanup(pids: list[int]) -> None:
    import os

    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL, signal.SIGINT],
                         ids=["sigterm", "sigkill", "sigint"])
def test_killed_flow_script_leaves_no_server_behind(scratch, sig, reliability):
    root, prefect_home = scratch
    script, pids = Script(root, prefect_home), []
    try:
        server, port, pids = script.wait_for_flow_run()
        script.proc.send_signal(sig)
        rc = script.proc.wait(timeout=GONE_S)
        took = _assert_nothing_left(pids, port, script)
        assert not _alive(server)
        if sig == signal.SIGTERM:
            assert rc == 143, f"exit {rc} after SIGTERM:\n{script.output()}"
        elif sig == signal.SIGKILL:
            assert rc == -signal.SIGKILL
        else:  # Ctrl-C: the flow unwinds (KeyboardInterrupt), the server stops on the way out
            assert rc != 0, script.output()
        reliability.fault("flows/pipeline.py", f"{sig.name} during the flow run",
                          detail=f"server and {len(pids)} processes gone {took:.1f} s after exit {rc}")
    finally:
        script.kill()
        _cleanup(pids)


def _servers_of(prefect_home: Path) -> list[int]:
    """Running uvicorn processes whose PREFECT_HOME is ``prefect_home`` (wherever they were reparented)."""
    mark = f"PREFECT_HOME={prefect_home}".encode()
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and "uvicorn" in _cmdline(int(entry.name)) and _alive(int(entry.name)):
            try:
                if mark in (entry / "environ").read_bytes().split(b"\0"):
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def test_finished_flow_script_exits_0_and_stops_its_server(scratch):
    """The normal path: the script runs its flow against its own server, which is gone when it exits."""
    root, prefect_home = scratch
    script = Script(root, prefect_home, "--stages", "body_model")
    try:
        rc = script.proc.wait(timeout=START_S + 120)
        script.kill()
        assert rc == 0, script.output()
        assert "Finished in state Completed" in script.output(), script.output()
        assert _servers_of(prefect_home) == []
    finally:
        script.kill()
        _cleanup(_servers_of(prefect_home))
