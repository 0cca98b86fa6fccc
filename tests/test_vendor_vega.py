"""scripts/vendor_vega.py (run by `make setup`) only warns when the npm registry answers badly: a real
local HTTP server stands in for the registry and cuts its answer off, garbles its status line, stalls
or refuses; the script warns in one line, exits 0 and writes no template."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import local_http
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "vendor_vega.py"


@pytest.fixture
def vendor_vega(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("vendor_vega_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "TEMPLATE", tmp_path / "vendor" / "dvc_plots.html")
    monkeypatch.setattr(module, "FETCH_TIMEOUT_S", 0.5)
    return module


@pytest.mark.parametrize("answer, says", [
    (local_http.cut_off, "IncompleteRead"),
    (local_http.garbage_status, "BadStatusLine"),
    (local_http.stall(3), "timed out"),
    (local_http.status(404), "HTTP Error 404"),
    (local_http.content(b"not a tarball"), "is not the pinned"),
], ids=["cut-off", "bad-status-line", "timeout", "404", "wrong-checksum"])
def test_any_network_failure_only_warns(vendor_vega, monkeypatch, capsys, answer, says):
    with local_http.serve(answer) as server:
        monkeypatch.setattr(vendor_vega, "REGISTRY", server.url)
        assert vendor_vega.main() == 0
        assert server.requests[0][1] == "/vega/-/vega-5.20.2.tgz"
    err = capsys.readouterr().err
    assert err.startswith(f"vendor_vega: warning: could not fetch vega from {server.url} (")
    assert says in err and err.count("\n") == 1
    assert not vendor_vega.TEMPLATE.parent.exists()
