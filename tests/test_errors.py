"""errors.run_stage: the exit code and message of a stage, its atexit handlers, and the XLA cache it sets up."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vaepipe import errors, paths

SRC = Path(__file__).resolve().parents[1] / "src"


def run_script(body: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "stage.py"
    script.write_text(textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": str(SRC), "VAEPIPE_CACHE": str(tmp_path / "cache")}
    env.pop("TF_XLA_FLAGS", None)
    return subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize(("raise_line", "code", "stderr"), [
    ("pass", 0, ""),
    ("raise ConfigError('train.epochs: -1 is not a positive integer')", 2,
     "error: train.epochs: -1 is not a positive integer"),
    ("raise KeyboardInterrupt", 130, "interrupted by SIGINT: stage stage stopped"),
])
def test_a_stage_exits_with_its_code_after_its_atexit_handlers(tmp_path, raise_line, code, stderr):
    result = run_script(f"""
        import atexit, os
        from vaepipe.errors import ConfigError, run_stage

        def main():
            atexit.register(lambda: print("atexit ran", flush=True))
            print("flags:", os.environ["TF_XLA_FLAGS"])
            {raise_line}

        run_stage(main)
        print("not reached: run_stage ends the process")
    """, tmp_path)
    assert result.returncode == code, result.stderr
    assert "atexit ran" in result.stdout  # the process ended early, but not before its atexit handlers
    assert "not reached" not in result.stdout
    assert stderr in result.stderr
    cache = tmp_path / "cache" / "xla"
    assert f"--tf_xla_persistent_cache_directory={cache}" in result.stdout
    assert [p.parent for p in cache.glob("*")] == [cache]  # one directory: this TensorFlow on this CPU


def test_xla_cache_flag_keeps_the_users_flags(monkeypatch, tmp_path):
    monkeypatch.setenv("VAEPIPE_CACHE", str(tmp_path))
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_auto_jit=0")
    errors.use_xla_cache()
    assert os.environ["TF_XLA_FLAGS"] == f"--tf_xla_auto_jit=0 --tf_xla_persistent_cache_directory={paths.xla_cache_dir()}"
    assert paths.xla_cache_dir().is_dir() and paths.xla_cache_dir().parent == tmp_path / "xla"
    # A cache directory of the user's own choosing is left as it is.
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_persistent_cache_directory=/elsewhere")
    errors.use_xla_cache()
    assert os.environ["TF_XLA_FLAGS"] == "--tf_xla_persistent_cache_directory=/elsewhere"
