"""The MLflow and Prefect UIs as a user sees them: a real server on loopback, a real (headless) browser.

The pipeline's run is the one the ``flow_project`` fixture made. Its name is read back from the MLflow
store and the Prefect API, then looked up in the runs list that the browser rendered: a link to that run,
showing that name. Screenshots are kept under the test's tmp dir; a failure names them.
Skipped, with the reason, only where no Chromium is installed (``apt-get install chromium``).
"""

from __future__ import annotations

import os
import sys
import urllib.parse
from pathlib import Path

import pytest
from browser import BROWSER_NAMES, find_browser, free_port, group_alive, headless, serving

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="session")
def browser() -> str:
    """The browser executable; asked for before the pipeline fixture, so a skip costs nothing."""
    found = find_browser()
    if found is None:
        chosen = os.environ.get("HMRMAMBA_BROWSER")
        where = f"HMRMAMBA_BROWSER={chosen} is not an executable" if chosen else (
            f"none of {', '.join(BROWSER_NAMES)} on PATH")
        pytest.skip(f"no Chromium for the browser-level UI checks ({where}); install one: apt-get install chromium")
    return found


#: The [+] before a parent run's name in MLflow 3.17's runs list: a stage run nested under the flow's run
#: shows once its parent row is expanded, as a user would do.
MLFLOW_EXPAND_ROW = 'button[data-component-id*="runnamecellrenderer"]'


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _server_env(**extra: str) -> dict[str, str]:
    """This process's environment without Prefect's settings (the servers get their own), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_TRACKING"))}
    env.update(DO_NOT_TRACK="true", MLFLOW_DISABLE_TELEMETRY="true", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               **extra)
    return env


def _link_to(target: str, name: str):
    """A test of a page's links: is one of them a link to ``target`` (a path ending) showing ``name``?"""
    return lambda links: any(href.rstrip("/").endswith(target) and text == name for href, text in links)


def _trained_stage_run(uri: str, flow_run_id: str):
    """The flow run's ``train_lift`` run in the MLflow store at ``uri``."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(search_all_experiments=True,
                              filter_string=f"tags.flow_run_id = '{flow_run_id}' and tags.stage = 'train_lift'")
    assert len(runs) == 1, f"{len(runs)} train_lift runs of flow run {flow_run_id} in {uri}"
    return runs.iloc[0]


def test_mlflow_ui_lists_the_pipeline_run_by_name(browser, flow_project, tmp_path):
    from hmrmamba.mlflow_runs import local_store_uri

    root, state = flow_project
    uri = local_store_uri(root)
    run = _trained_stage_run(uri, str(state.state_details.flow_run_id))
    name, run_id, eid = run["tags.mlflow.runName"], run["run_id"], run["experiment_id"]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [_bin("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", uri, "--artifacts-destination", str(tmp_path / "served-artifacts")]
    # the runs list filtered by the run's name, as typed into the UI's search box
    search = urllib.parse.quote(f"attributes.run_name = '{name}'")
    url = f"{base}/#/experiments/{eid}/runs?searchFilter={search}"
    env = _server_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no job workers: the UI does not need them
    with serving(cmd, f"{base}/health", env, tmp_path / "mlflow-server.log") as server, \
            headless(browser, tmp_path) as chromium:
        page, shown = chromium.open(url, tmp_path / "mlflow-runs.png", _link_to(f"/runs/{run_id}", name),
                                    expand=MLFLOW_EXPAND_ROW)
    assert not group_alive(server.pid), "the MLflow server outlived the test"
    assert shown, (f"MLflow UI at {url} shows no link to run {run_id} named {name!r} "
                   f"(screenshot {page.screenshot}); links seen: {page.links[:40]}")
    assert page.screenshot.stat().st_size > 10_000, f"blank screenshot {page.screenshot}"


def test_prefect_ui_lists_the_pipeline_flow_run_by_name(browser, flow_project, tmp_path):
    """``prefect server start`` (the UI; the test harness's server serves only the API) on the same database."""
    import prefect.settings
    from prefect.client.orchestration import get_client

    _, state = flow_project
    fid = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        name = client.read_flow_run(fid).name
    database = prefect.settings.PREFECT_SERVER_DATABASE_CONNECTION_URL.value()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = _server_env(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_DATABASE_CONNECTION_URL=database,
                      PREFECT_SERVER_UI_API_URL=f"{base}/api")
    cmd = [_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-services", "--ui"]
    url = f"{base}/runs?{urllib.parse.urlencode({'flow-run-search': name})}"  # the runs page's search box
    with serving(cmd, f"{base}/api/health", env, tmp_path / "prefect-server.log") as server, \
            headless(browser, tmp_path) as chromium:
        page, shown = chromium.open(url, tmp_path / "prefect-runs.png", _link_to(f"/runs/flow-run/{fid}", name))
    assert not group_alive(server.pid), "the Prefect server outlived the test"
    assert shown, (f"Prefect UI at {url} shows no link to flow run {fid} named {name!r} "
                   f"(screenshot {page.screenshot}); links seen: {page.links[:40]}")
    assert page.screenshot.stat().st_size > 10_000, f"blank screenshot {page.screenshot}"
