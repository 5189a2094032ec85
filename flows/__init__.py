"""Prefect flows over the hmrmamba stages: ``pipeline`` (the DVC graph), ``ablation`` (Table 3), ``detectors``
(Table 2). Run one with ``python flows/<name>.py --help``.

This package imports no Prefect at import time; :func:`prepare_environment` is what the flow scripts call
before Prefect loads, because Prefect reads ``PREFECT_HOME`` (and creates that directory) on import.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path


def prefect_home_for(root: Path) -> Path:
    """Where Prefect keeps its database and profiles for this project: ``<root>/.prefect``."""
    return Path(root).resolve() / ".prefect"


def prepare_environment(argv: Sequence[str] | None = None) -> Path:
    """Telemetry off, and ``PREFECT_HOME`` under the project unless the user chose one -> the project root.

    ``--root`` in ``argv`` names the project; otherwise the nearest directory holding params.yaml. Call it
    before anything imports prefect. A user-set ``PREFECT_HOME`` must be absolute (a relative one would
    move with the working directory).
    """
    from hmrmamba.config import find_project_root
    from hmrmamba.errors import InputError
    from hmrmamba.stages.common import apply_offline_env

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--root")
    known, _ = parser.parse_known_args(argv)
    root = Path(known.root).resolve() if known.root else find_project_root()
    apply_offline_env()
    if "PREFECT_HOME" in os.environ:
        if not Path(os.environ["PREFECT_HOME"]).expanduser().is_absolute():
            raise InputError(f"PREFECT_HOME={os.environ['PREFECT_HOME']!r} is relative", field="PREFECT_HOME",
                             expected="an absolute path, or unset to use <project>/.prefect")
    else:
        os.environ["PREFECT_HOME"] = str(prefect_home_for(root))
    return root


def script_environment(prog: str, argv: Sequence[str] | None = None) -> Path:
    """:func:`prepare_environment` for a ``__main__`` block: a one-line error and exit 2 on bad input."""
    import sys

    from hmrmamba.errors import InputError

    install_cleanup()
    try:
        return prepare_environment(sys.argv[1:] if argv is None else argv)
    except InputError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


# -- nothing a flow script starts outlives it ---------------------------------------------------------
#
# Without PREFECT_API_URL, Prefect starts a temporary API server (uvicorn, ~200 MB, a loopback port) as a
# child of the flow process and stops it only from ``atexit``: SIGTERM (default action) or ``kill -9`` of
# the script left it running, reparented to PID 1. So the flow scripts start that server themselves
# (:func:`flow_server`, from :func:`flows.common.cli_call`): the same uvicorn command Prefect runs, but
#
# * on Linux the server asks the kernel for SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``,
#   set by a two-line launcher before it execs uvicorn, so no ``preexec_fn`` runs in a threaded parent):
#   this covers ``kill -9``, which no handler in the killed process can;
# * the script's SIGTERM handler (:func:`install_cleanup`, from :func:`script_environment`) terminates
#   every descendant (the server, Dask workers, stage subprocesses) and exits 143;
# * Ctrl-C unwinds the flow as before (KeyboardInterrupt), and the server stops on the way out.
#
# The server runs in its own session, so Ctrl-C in a terminal reaches the flow (which records its end)
# and not the server under it. The script itself keeps its process group: moving it to a new one would
# hide it from the terminal's Ctrl-C when it runs under make or another parent.

_PR_SET_PDEATHSIG = 1
#: Run by the server's process before it becomes uvicorn: die with the parent (argv[1] is the parent's pid).
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    f"    ctypes.CDLL(None, use_errno=True).prctl({_PR_SET_PDEATHSIG}, int(signal.SIGTERM), 0, 0, 0)\n"
    "except (OSError, AttributeError):\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(0)\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])\n"
)

_CLEANUP_INSTALLED = False


class ServerStartError(RuntimeError):
    """The flow's Prefect server did not answer its health check in time, or exited."""


def descendants(pid: int | None = None) -> list[int]:
    """Pids of every process below ``pid`` (default: this one), children first; [] when it is gone."""
    import psutil

    try:
        return [p.pid for p in psutil.Process(os.getpid() if pid is None else pid).children(recursive=True)]
    except psutil.Error:
        return []


def terminate_descendants(grace: float = 5.0) -> None:
    """SIGTERM every descendant of this process, then SIGKILL those still there after ``grace`` seconds."""
    import signal
    import time

    pids = descendants()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _alive(p)]
        time.sleep(0.05)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _alive(pid: int) -> bool:
    """Running (a zombie child counts as gone: it is reaped here)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:  # not our child: ask the kernel
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _on_sigterm(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    import signal
    import sys

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed pipe: nothing to flush
            pass
    terminate_descendants()
    os._exit(128 + signum)


def install_cleanup() -> None:
    """SIGTERM (and SIGHUP) end this script's descendants, then the script with 128 + signal (143 for
    SIGTERM). Main thread only; idempotent. Prefect's flow engine swaps in its own SIGTERM handler while a
    flow runs: it marks the run crashed, puts this handler back and signals again, so this one still ends it.
    """
    import signal
    import threading

    global _CLEANUP_INSTALLED
    if _CLEANUP_INSTALLED or threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _on_sigterm)
    _CLEANUP_INSTALLED = True


class LocalServer:
    """A Prefect API server on ``127.0.0.1:<free port>``, a child of this process that dies with it."""

    def __init__(self) -> None:
        self.process = None
        self.port: int | None = None
        self.seconds: float | None = None  # how long the start took

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def _command(self) -> list[str]:
        import sys

        import prefect

        uvicorn = ["-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
                   "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
                   "--log-level", "error", "--lifespan", "on"]
        if sys.platform.startswith("linux"):
            return [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *uvicorn]
        return [sys.executable, *uvicorn]

    def _env(self) -> dict[str, str]:
        from prefect.settings import get_current_settings

        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT__SERVER_FINAL": "1", **get_current_settings().to_environment_variables(exclude_unset=True)}
        env.pop("PREFECT_API_URL", None)
        return env

    def start(self, timeout: float | None = None) -> str:
        """Start it and wait until ``/api/health`` answers (at most ``timeout`` seconds, default
        ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``) -> the API URL."""
        import atexit
        import socket
        import subprocess
        import time
        import urllib.error
        import urllib.request

        if timeout is None:
            from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

            timeout = float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
        t0 = time.monotonic()
        deadline = t0 + timeout
        atexit.register(self.stop)
        for _ in range(3):  # the free port may be taken before uvicorn binds it: try another
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                self.port = sock.getsockname()[1]
            self.process = subprocess.Popen(self._command(), env=self._env(), stdin=subprocess.DEVNULL,
                                            start_new_session=True)
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as resp:
                        if resp.status == 200:
                            self.seconds = time.monotonic() - t0
                            return self.api_url
                except (urllib.error.URLError, OSError):
                    pass
                time.sleep(0.1)
            if self.process.poll() is None:  # still starting at the deadline
                self.stop()
                raise ServerStartError(f"the Prefect server on {self.api_url} did not answer within "
                                       f"{timeout:g} s (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")
        code = self.process.returncode
        self.stop()
        raise ServerStartError(f"the Prefect server exited with code {code} while starting")

    def stop(self, grace: float = 10.0) -> None:
        """Terminate it, and kill it if it has not gone after ``grace`` seconds. Idempotent."""
        import subprocess

        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace)


def configured_api_url() -> str | None:
    """The Prefect API this process is set to use (env, profile or settings context), or None."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


@contextlib.contextmanager
def flow_server() -> Iterator[str | None]:
    """Run the body against a :class:`LocalServer` started here, unless a Prefect API is configured
    (then the body runs against that, and this yields None). The server's URL is ``PREFECT_API_URL`` inside,
    in the settings and the environment (for subprocesses); the server is stopped on the way out. With
    ephemeral servers turned off (``PREFECT_SERVER_ALLOW_EPHEMERAL_MODE=false``) none is started either."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED, temporary_settings

    if configured_api_url() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        yield None
        return

    server = LocalServer()
    url = server.start()
    saved = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        if saved is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = saved
        server.stop()
