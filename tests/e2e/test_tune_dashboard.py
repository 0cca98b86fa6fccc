"""`make tune-dashboard` for real: a small Optuna study in a journal file (trials told their values through
Optuna's API, no training), `python -m vaepipe.tune.dashboard` started as the Makefile starts it (the
storage in VAEPIPE_TUNE_STORAGE, never on its command line) on a free port of 127.0.0.1, and the page opened
in Debian's Chromium through Playwright, which must show a trial's value read from the storage."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import optuna
import psutil
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.storages.journal import JournalFileBackend
from pipeline_repo import PROJECT, VENV_BIN, free_port, stage_env, wait_for
from test_browser import CHROMIUM_FLAGS, UI_TIMEOUT_MS, chromium

pytestmark = pytest.mark.e2e

SPACE = {"model.latent_dim": IntDistribution(2, 16), "train.beta": FloatDistribution(0.1, 4.0, log=True)}
# Values no default or rounding would show by chance: the page can only have them from the storage.
VALUES = [171.3125, 148.0625, 160.4375]


def make_study(journal: Path) -> optuna.Study:
    """A study as `make tune` leaves one in its journal file: three COMPLETE trials, values told directly."""
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.create_study(study_name="dash", storage=storage, direction="minimize")
    for latent_dim, value in zip((2, 8, 4), VALUES, strict=True):
        study.enqueue_trial({"model.latent_dim": latent_dim, "train.beta": 1.0})
        trial = study.ask(SPACE)
        study.tell(trial, value)
    return study


@pytest.fixture
def dashboard(tmp_path):
    """`python -m vaepipe.tune.dashboard --host 127.0.0.1 --port PORT` (what `make tune-dashboard` runs)
    with STORAGE= as the Makefile passes it: (the URL it printed, its process)."""
    journal = tmp_path / "studies" / "journal.log"
    journal.parent.mkdir()
    make_study(journal)
    port = free_port()
    log = tmp_path / "dashboard.log"
    with log.open("w") as handle:
        process = subprocess.Popen([str(VENV_BIN / "python"), "-m", "vaepipe.tune.dashboard", "--host", "127.0.0.1",
                                    "--port", str(port)], cwd=tmp_path,
                                   env=stage_env(PYTHONPATH=str(PROJECT / "src"),
                                                 VAEPIPE_TUNE_STORAGE=str(journal)),
                                   stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        printed = wait_for(lambda: process.poll() is not None or re.search(r"on (http://\S+)/ \(", log.read_text()),
                           timeout=120, interval=0.2, what="the URL the dashboard prints")
        assert process.poll() is None, log.read_text()
        url = printed.group(1)
        assert url == f"http://127.0.0.1:{port}" and f"studies in {journal}: dash" in log.read_text()
        assert str(journal) not in " ".join(process.args)  # the storage travels in the environment only
        yield url, process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_the_dashboard_shows_a_real_studys_trial_values_in_chromium(dashboard, tmp_path):
    url, process = dashboard
    listening = [c.laddr for c in psutil.Process(process.pid).net_connections("tcp") if c.status == psutil.CONN_LISTEN]
    assert [(address.ip, address.port) for address in listening] == [("127.0.0.1", int(url.rsplit(":", 1)[1]))]
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        try:
            page.goto(f"{url}/dashboard/")
            page.get_by_text(re.compile(r"^\d+\. dash$")).first.click()  # the study's card in the list of studies
            # The study's page: the best trial (the lowest value, trial 1) and its value.
            page.get_by_text("Best Trial (number=1)").wait_for()
            page.get_by_text(str(VALUES[1]), exact=True).first.wait_for()
            page.screenshot(path=str(tmp_path / "study.png"))
            # Its trials, listed: trial 2 selected, its value in its detail pane.
            assert re.search(r"/dashboard/studies/\d+$", page.url), page.url
            page.goto(f"{page.url}/trials")
            page.get_by_text("Trial 2", exact=True).first.click()
            page.get_by_text("Trial 2 (trial_id=2)").wait_for()
            page.get_by_text(str(VALUES[2]), exact=True).first.wait_for()
            page.screenshot(path=str(tmp_path / "trials.png"))
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()


def test_no_journal_yet_is_one_line_and_creates_nothing(tmp_path):
    journal = tmp_path / "absent" / "journal.log"
    result = subprocess.run([str(VENV_BIN / "python"), "-m", "vaepipe.tune.dashboard", "--port", "0"], cwd=tmp_path,
                            env=stage_env(PYTHONPATH=str(PROJECT / "src"),
                                          VAEPIPE_TUNE_STORAGE=str(journal)),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"no Optuna journal at {journal}: run `make tune` first" in result.stderr
    assert not journal.parent.exists()


def test_make_tune_dashboard_passes_the_storage_in_the_environment_and_binds_host_and_port():
    result = subprocess.run(["make", "-n", "tune-dashboard", "STORAGE=postgresql://u:secret@db/studies",
                             "DASHBOARD_PORT=8123"], cwd=PROJECT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # Values reach the command as "$VAR" expansions of exported variables, never pasted into shell code.
    assert ('VAEPIPE_TUNE_STORAGE="$STORAGE" python -m vaepipe.tune.dashboard --host="$HOST" '
            '--port="$DASHBOARD_PORT"') in result.stdout.splitlines()
    phony = next(line for line in (PROJECT / "Makefile").read_text().splitlines() if line.startswith(".PHONY:"))
    assert "tune-dashboard" in phony.split()


def test_a_port_in_use_is_one_line(tmp_path):
    journal = tmp_path / "journal.log"
    make_study(journal)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([str(VENV_BIN / "python"), "-m", "vaepipe.tune.dashboard", "--port", str(port)],
                                cwd=tmp_path, env=stage_env(PYTHONPATH=str(PROJECT / "src"),
                                                            VAEPIPE_TUNE_STORAGE=str(journal)),
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"optuna-dashboard cannot listen on 127.0.0.1:{port}" in result.stderr and "DASHBOARD_PORT=" in result.stderr
