"""MLflow faults: a tracking server that is down, goes down mid-run or never answers, and several
processes logging to one sqlite store at once.

A stage must fail clearly (``TrackingUnavailable`` naming the server) or continue on the explicit
local fallback (``tracking.fallback_local: true``) -- never hang: every case runs under a deadline.
"""

from __future__ import annotations

import http.server
import socket
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest

from hmrmamba import mlflow_runs
from hmrmamba.mlflow_runs import TrackingUnavailable

from .support import PYTHON, expect_clean_failure, load_yaml_params, own_mlflow_env, snapshot, subprocess_env

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def closed_port() -> int:
    """A localhost port with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HealthThenGone(http.server.BaseHTTPRequestHandler):
    """Answers ``/health`` once, then the server shuts down and closes its socket: gone mid-run."""

    close_socket = True

    def do_GET(self):
        self.send_response(200 if self.path.endswith("/health") else 503)
        self.end_headers()
        self.wfile.write(b"OK")

        def stop():
            self.server.shutdown()
            if self.close_socket:
                self.server.server_close()

        threading.Thread(target=stop, daemon=True).start()

    def log_message(self, *args):
        pass


class HealthThenSilent(HealthThenGone):
    """Answers ``/health`` once, then stops serving but keeps its socket: requests hang unanswered."""

    close_socket = False


def detect2d_call(project: Path, params: dict):
    from hmrmamba.stages import detect2d
    from hmrmamba.stages.common import execute

    return lambda: execute(detect2d.STAGE, detect2d.run, root=project, params=params)


def _with_tracking(params: dict, **tracking_params) -> dict:
    return {**params, "tracking": {**params.get("tracking", {}), **tracking_params}}


def test_unreachable_server_fails_fast_before_any_work(project, reliability):
    params = _with_tracking(load_yaml_params(project), uri=f"http://127.0.0.1:{closed_port()}")
    watch = [project / d for d in ("data", "metrics", "models")]
    t0 = time.monotonic()
    with own_mlflow_env():
        expect_clean_failure(
            detect2d_call(project, params),
            watch=watch,
            exc_type=TrackingUnavailable,
            match=r"http://127\.0\.0\.1:\d+ is not reachable.*fallback_local",
        )
    assert time.monotonic() - t0 < 15
    reliability.fault(
        "stage detect2d + MLflow",
        "tracking server down (closed localhost port)",
        detail=f"clear error in {time.monotonic() - t0:.1f} s, outputs untouched",
    )


def test_server_that_never_answers_fails_fast(project, reliability):
    with socket.socket() as silent:  # accepts connections (backlog) but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        params = _with_tracking(load_yaml_params(project), uri=uri)
        t0 = time.monotonic()
        with own_mlflow_env():
            expect_clean_failure(
                detect2d_call(project, params), exc_type=TrackingUnavailable, match="not reachable"
            )
    assert time.monotonic() - t0 < 15
    reliability.fault(
        "stage detect2d + MLflow",
        "tracking server accepts but never answers",
        detail=f"clear error in {time.monotonic() - t0:.1f} s",
    )


def test_unreachable_server_with_explicit_local_fallback(project, reliability, caplog):
    import mlflow

    params = _with_tracking(
        load_yaml_params(project), uri=f"http://127.0.0.1:{closed_port()}", fallback_local=True
    )
    with own_mlflow_env():
        metrics = detect2d_call(project, params)()
        mlflow.set_tracking_uri(mlflow_runs.local_store_uri(project))
        runs = mlflow.search_runs(experiment_names=["detect2d"], output_format="list")
    assert "falling back to the local store" in caplog.text
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics["train.gt.mean_px"] == metrics["train"]["gt"]["mean_px"]
    reliability.fault(
        "stage detect2d + MLflow",
        "tracking server down, tracking.fallback_local: true",
        detail="stage finished, run in the local store",
    )


@pytest.mark.parametrize(
    "handler, limit",
    [
        pytest.param(HealthThenGone, 20, id="refuses"),
        pytest.param(HealthThenSilent, 60, id="hangs", marks=pytest.mark.slow),
    ],
)
def test_server_going_down_mid_run_fails_within_a_deadline(
    tmp_path, reliability, monkeypatch, handler, limit
):
    """The server answers the reachability check, then disappears (connections refused) or hangs
    (connections accepted, never answered): MLflow's client would retry for ~4 minutes per request;
    the bounded retries and timeouts give a clear error within ``limit`` seconds."""
    for key in mlflow_runs.HTTP_LIMITS:
        monkeypatch.delenv(key, raising=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    t0 = time.monotonic()
    with own_mlflow_env():
        err = expect_clean_failure(
            lambda: mlflow_runs.stage_run(
                "train_lift", root=tmp_path, params={"lr": 1}, tracking={"uri": uri}
            ).__enter__(),
            exc_type=TrackingUnavailable,
            match="stopped answering during the run",
        )
    elapsed = time.monotonic() - t0
    server.server_close()
    assert elapsed < limit, elapsed
    assert uri in str(err)
    how = "refuses connections" if handler is HealthThenGone else "stops answering (requests hang)"
    reliability.fault(
        "mlflow_runs.stage_run",
        f"MLflow server {how} right after the reachability check",
        detail=f"clear error after {elapsed:.1f} s (bounded retries and timeouts)",
    )


WRITER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from hmrmamba import mlflow_runs
    root, who, n, go = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    while not go.exists():
        time.sleep(0.01)
    with mlflow_runs.stage_run("evaluate", root=root, params={"who": who, "n": n}, tags={"who": who}) as run:
        for i in range(n):
            mlflow_runs.log_metrics({"value": float(i), "who": float(ord(who[-1]))}, step=i)
    print(run.info.run_id)
""")


@pytest.mark.parametrize("store", ["fresh", pytest.param("existing", marks=pytest.mark.slow)])
def test_parallel_runs_in_one_sqlite_store_are_neither_lost_nor_mixed(tmp_path, reliability, store):
    """Three processes start at the same instant and log to one ``mlflow.db`` (also while creating it)."""
    from mlflow.tracking import MlflowClient

    root = tmp_path / "project"
    root.mkdir()
    if store == "existing":
        with own_mlflow_env():
            with mlflow_runs.stage_run("evaluate", root=root, params={"who": "setup"}, tags={"who": "setup"}):
                pass
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    go, n = tmp_path / "go", 25
    procs = {
        who: subprocess.Popen(
            [PYTHON, str(script), str(root), who, str(n), str(go)],
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for who in ("proc-A", "proc-B", "proc-C")
    }
    time.sleep(1.0)
    go.touch()
    run_ids = {}
    for who, p in procs.items():
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, f"{who} failed:\n{err[-3000:]}"
        run_ids[who] = out.strip().splitlines()[-1]
    client = MlflowClient(tracking_uri=mlflow_runs.local_store_uri(root))
    exp = client.get_experiment_by_name("evaluate")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 3 + (store == "existing")
    for who, run_id in run_ids.items():
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params["who"] == who and run.data.tags["who"] == who
        values = client.get_metric_history(run_id, "value")
        assert sorted((m.step, m.value) for m in values) == [(i, float(i)) for i in range(n)]
        assert {m.value for m in client.get_metric_history(run_id, "who")} == {float(ord(who[-1]))}
    reliability.fault(
        "tracking (sqlite store)",
        f"3 processes logging at once to a {store} mlflow.db",
        detail=f"3 runs x {n} steps, none lost or mixed",
    )


def test_stage_command_with_the_server_down_prints_one_line(project, reliability):
    from .support import run_stage_process, write_yaml_params

    params = _with_tracking(load_yaml_params(project), uri=f"http://127.0.0.1:{closed_port()}")
    write_yaml_params(project, params)
    before = snapshot(project / "data", project / "metrics")
    out = run_stage_process(project, "detect2d", timeout=120)
    assert snapshot(project / "data", project / "metrics") == before
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "hmrmamba detect2d: error: " in out.stderr and "not reachable" in out.stderr


@pytest.mark.slow
def test_real_mlflow_server_killed_mid_run(tmp_path, reliability, monkeypatch):
    """A real ``mlflow server`` (127.0.0.1) is killed while a stage logs to it: clear error in bounded time."""
    for key in mlflow_runs.HTTP_LIMITS:
        monkeypatch.delenv(key, raising=False)
    port = closed_port()
    server = subprocess.Popen(
        [
            str(Path(PYTHON).with_name("mlflow")),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--workers",
            "1",
        ],
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while not mlflow_runs.server_reachable(uri, timeout=1.0):
            assert server.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        logger = subprocess.Popen(
            [
                PYTHON,
                "-c",
                textwrap.dedent(f"""
            import sys, time
            from hmrmamba import mlflow_runs
            from pathlib import Path
            try:
                with mlflow_runs.stage_run("train_lift", root=Path({str(tmp_path)!r}), params={{}},
                                        tracking={{"uri": {uri!r}}}):
                    print("started", flush=True)
                    for i in range(100000):
                        mlflow_runs.log_metrics({{"loss": 1.0 / (i + 1)}}, step=i)
                        time.sleep(0.05)
            except mlflow_runs.TrackingUnavailable as exc:
                print("TrackingUnavailable:", exc, file=sys.stderr)
                sys.exit(3)
        """),
            ],
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert logger.stdout.readline().strip() == "started"
        time.sleep(2.0)
        import os
        import signal

        os.killpg(server.pid, signal.SIGKILL)
        t0 = time.monotonic()
        _, err = logger.communicate(timeout=120)
        elapsed = time.monotonic() - t0
    finally:
        if server.poll() is None:
            import os
            import signal

            os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    assert logger.returncode == 3, err[-3000:]
    assert "stopped answering during the run" in err and uri in err
    reliability.fault(
        "mlflow_runs.stage_run",
        "real mlflow server killed (SIGKILL) mid-run",
        detail=f"clear error {elapsed:.1f} s after the kill",
    )


def test_compare_with_the_server_down_prints_one_line(tmp_path, reliability, monkeypatch, capsys):
    from hmrmamba.cli import main
    from hmrmamba.profiles import compose, write_params

    root = Path(__file__).resolve().parents[2]
    uri = f"http://127.0.0.1:{closed_port()}"
    write_params(tmp_path, compose(root, "default", [f"tracking.uri={uri}"]))
    monkeypatch.chdir(tmp_path)
    t0 = time.monotonic()
    with own_mlflow_env():
        assert main(["compare"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hmrmamba compare: error: ") and "not reachable" in err
    assert time.monotonic() - t0 < 15 and not (tmp_path / "plots").exists()
    reliability.fault("hmrmamba compare + MLflow", "tracking server down (closed localhost port)",
                      detail=f"one-line error in {time.monotonic() - t0:.1f} s, nothing written")


def test_failing_stage_and_flow_leave_no_run_running(tmp_path, reliability):
    """A stage that raises ends its run FAILED, and the flow's parent run around it too: none stays RUNNING."""
    from mlflow.tracking import MlflowClient

    from hmrmamba.profiles import compose
    from hmrmamba.stages.common import execute

    params = compose(Path(__file__).resolve().parents[2], "default", [])
    uri = mlflow_runs.local_store_uri(tmp_path)

    def broken(params, layout):
        raise RuntimeError("the stage broke half-way")

    with own_mlflow_env():
        with pytest.raises(RuntimeError, match="half-way"):
            with mlflow_runs.parent_run(root=tmp_path, uri=uri, experiment="flow-pipeline", run_name="pipeline",
                                        tags={"flow": "pipeline"}, params={}, record={}) as pid:
                execute("evaluate", broken, root=tmp_path, params=params, tags={mlflow_runs.PARENT_TAG: pid})
        with pytest.raises(RuntimeError, match="half-way"):
            execute("evaluate", broken, root=tmp_path, params=params)
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FAILED"}
    assert not (tmp_path / "metrics/evaluate.json").exists()
    reliability.fault("stage + flow parent run (sqlite store)", "the stage raises mid-run",
                      detail="stage runs and the parent end FAILED, none RUNNING")
