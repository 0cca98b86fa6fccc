"""A real browser over the real MLflow UI: Debian's Chromium driven by Playwright (executable_path: the
system browser; Playwright's own download is not reachable here). Two pipeline runs of different latent
sizes, `mlflow ui` started the way `make ui` starts it, the link it prints opened as a user would; then
`make compare`'s HTML page opened from disk. Screenshots of a failure are kept in the test's tmp dir."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from pipeline_repo import (
    PROJECT,
    SERVER_ENV,
    VENV_BIN,
    copy_repo,
    free_port,
    mlflow_runs,
    stage_env,
    wait_for,
    wait_until_healthy,
)

pytestmark = pytest.mark.e2e

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
INSTALL_HINT = "no Chromium: install it with `apt-get install -y chromium` (Debian) to run the browser test"
UI_TIMEOUT_MS = 120_000  # the UI's first page load on a busy 2-core machine


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail(INSTALL_HINT + " (CI=true: .ci/run installs it; a missing browser is a failure here)")
    pytest.skip(INSTALL_HINT)


@contextlib.contextmanager
def offline_page(html: Path, failures: Path):
    """A Chromium page on a local HTML file with the network cut off (any http(s) request aborted), so a
    figure or script fetched from a CDN shows as missing; a failure's screenshot goes to `failures`."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
        context = browser.new_context()
        context.set_offline(True)
        context.route(re.compile(r"^https?://"), lambda route: route.abort())
        page = context.new_page()
        try:
            page.goto(html.as_uri())
            page.wait_for_load_state("load")
            yield page
        except Exception:
            page.screenshot(path=str(failures / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()


@pytest.fixture(scope="module")
def two_runs(two_runs, tmp_path_factory) -> Path:
    """This module's copy of the session's two_runs repo (tests/e2e/conftest.py): a store with two FINISHED
    pipeline runs, latent_dim 2 and 3 (the quick repo's run, then a `dvc repro` of latent_dim 3)."""
    repo = copy_repo(two_runs.repo, tmp_path_factory.mktemp("browser") / "repo")
    assert yaml.safe_load((repo / "params.yaml").read_text())["model"]["latent_dim"] == 3
    assert [status for _, status in mlflow_runs(repo)] == ["FINISHED", "FINISHED"]
    return repo


@pytest.fixture(scope="module")
def ui(two_runs):
    """`python -m vaepipe.tracking ui` (what `make ui` runs) on a free port: (the link it printed, process)."""
    port = free_port()
    log = two_runs / "ui.log"
    with log.open("w") as handle:
        process = subprocess.Popen([str(VENV_BIN / "python"), "-m", "vaepipe.tracking", "ui", "--host", "127.0.0.1",
                                    "--port", str(port)], cwd=two_runs, env=stage_env(PYTHONPATH="src", **SERVER_ENV),
                                   stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        link = wait_for(lambda: re.search(r"^(http://\S+workflowType=machine_learning)$", log.read_text(), re.M),
                        timeout=60, what="the link `make ui` prints").group(1)

        wait_until_healthy(f"http://127.0.0.1:{port}", process, timeout=180, interval=1)
        yield link, port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


@pytest.fixture
def page(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = chromium()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1600, "height": 1100})
        page = context.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        yield page
        browser.close()


def shot(page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / f"{name}.png"))


def test_ui_lists_both_runs_their_dataset_val_loss_charts_and_artifacts(two_runs, ui, page, tmp_path):
    link, port = ui
    assert link.startswith(f"http://127.0.0.1:{port}/#/experiments/")
    names = ["tutorial-z2", "tutorial-z3"]
    try:
        page.goto(link)
        for name in names:
            page.get_by_text(name, exact=True).first.wait_for()
        # The Dataset column names the dataset (from mlflow.log_input), with its digest.
        page.get_by_text(re.compile(r"^mnist \([0-9a-f]{16}\)$")).first.wait_for()
        shot(page, tmp_path, "runs")

        # The chart view draws val_loss for both runs (one legend entry per run in the val_loss chart).
        page.goto(link + "&compareRunsMode=CHART")
        page.get_by_placeholder("Search metric charts").fill("val_loss")
        for name in names:
            page.get_by_text(f"{name} (val_loss)", exact=True).first.wait_for()
        # The legend is drawn before the chart's data has loaded (a spinner): wait for the second line.
        page.locator(".scatterlayer .trace").nth(1).wait_for()
        assert page.locator(".scatterlayer .trace").count() >= 2
        shot(page, tmp_path, "charts")

        # A run's page lists the plot stage's reconstructions.png.
        experiment_id = re.search(r"/experiments/(\d+)/", link).group(1)
        run_id = mlflow_runs(two_runs)[0][0]
        page.goto(f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs/{run_id}/artifacts")
        page.get_by_text("plots", exact=True).first.click()
        page.get_by_text("reconstructions.png", exact=True).first.wait_for()
    except Exception:
        page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        raise


def test_compare_html_opens_from_disk_with_every_image_loaded(two_runs, page, tmp_path):
    result = subprocess.run([str(VENV_BIN / "python"), "-m", "vaepipe.compare"], cwd=two_runs,
                            env=stage_env(PYTHONPATH="src"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| tutorial-z2 |" in result.stdout and "| tutorial-z3 |" in result.stdout
    html = two_runs / "reports" / "compare.html"
    try:
        page.goto(html.as_uri())
        page.wait_for_load_state("load")
        widths = page.evaluate("[...document.images].map(image => image.complete ? image.naturalWidth : 0)")
        assert len(widths) == 3 and all(width > 0 for width in widths), widths  # curves, rate-distortion, vs latent_dim
        assert page.locator("table tbody tr").count() == 2
        assert page.locator("table a[href*='/runs/']").count() == 2
    except Exception:
        page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        raise


def test_dvc_plots_page_draws_the_curves_offline(two_runs, page, tmp_path):
    """`dvc plots show` with the template `make setup` vendors (scripts/vendor_vega.py): vega, vega-lite and
    vega-embed inlined, so with the network cut the loss, KL and reconstruction curves still draw."""
    template = PROJECT / "vendor" / "dvc_plots.html"
    if not template.exists():
        message = "vendor/dvc_plots.html is missing: `make setup` (scripts/vendor_vega.py) fetches it from npm"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    (two_runs / "scripts").mkdir(exist_ok=True)
    shutil.copy2(PROJECT / "scripts" / "vendor_vega.py", two_runs / "scripts" / "vendor_vega.py")
    (two_runs / "vendor").mkdir(exist_ok=True)
    shutil.copy2(template, two_runs / "vendor" / "dvc_plots.html")
    env = stage_env()
    subprocess.run([str(VENV_BIN / "python"), "scripts/vendor_vega.py"], cwd=two_runs, env=env, check=True)
    out = tmp_path / "dvc_plots"
    result = subprocess.run([str(VENV_BIN / "dvc"), "plots", "show", "-o", str(out)], cwd=two_runs, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    html = (out / "index.html").read_text()
    assert "cdn.jsdelivr" not in html and "<script src=" not in html
    assert html.count('src="static/workspace_plots_reconstructions.png"') == 1  # each figure once
    try:
        page.context.set_offline(True)
        page.context.route(re.compile(r"^https?://"), lambda route: route.abort())
        page.goto((out / "index.html").as_uri())
        page.wait_for_load_state("load")
        for plot_id in ("loss", "kl", "train_log_csv"):
            drawn = page.locator(f"[id='{plot_id}'] canvas, [id='{plot_id}'] svg.marks").first
            drawn.wait_for(timeout=30_000)
            box = drawn.bounding_box()
            assert box and box["width"] > 100 and box["height"] > 50, (plot_id, box)
        widths = page.evaluate("[...document.images].map(image => image.complete ? image.naturalWidth : 0)")
        figures = len(list((two_runs / "plots").glob("*.png")))  # the plot stage's PNGs, each shown once
        assert figures >= 4 and len(widths) == figures and all(width > 0 for width in widths), widths
        shot(page, tmp_path, "dvc_plots")
    except Exception:
        page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        raise
