"""process.run_stage: the exit code and message of a stage, its atexit handlers, and the XLA cache it sets up."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vaepipe import errors, paths, process

SRC = Path(__file__).resolve().parents[1] / "src"


def run_script(body: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Run `body` as a stage script named stage.py (so its messages name stage `stage`)."""
    script = tmp_path / "stage.py"
    script.write_text(textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": str(SRC), "VAEPIPE_CACHE": str(tmp_path / "cache")}
    env.pop("TF_XLA_FLAGS", None)
    return subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
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
        from vaepipe.errors import ConfigError
        from vaepipe.process import run_stage

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
    process.use_xla_cache()
    assert os.environ["TF_XLA_FLAGS"] == f"--tf_xla_auto_jit=0 --tf_xla_persistent_cache_directory={paths.xla_cache_dir()}"
    assert paths.xla_cache_dir().is_dir() and paths.xla_cache_dir().parent == tmp_path / "xla"
    # A cache directory of the user's own choosing is left as it is.
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_persistent_cache_directory=/elsewhere")
    process.use_xla_cache()
    assert os.environ["TF_XLA_FLAGS"] == "--tf_xla_persistent_cache_directory=/elsewhere"



@pytest.mark.parametrize("draws_figures", [False, True])
def test_a_stage_runs_keras_without_importing_scikit_learn_or_matplotlib_unless_it_draws(tmp_path, draws_figures):
    result = run_script(f"""
        import sys
        import numpy as np
        from vaepipe.process import run_stage

        def main():
            import keras
            model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
            print("output", model.predict(np.ones((1, 3)), verbose=0).shape, "sklearn", sys.modules.get("sklearn"),
                  "matplotlib", sys.modules.get("matplotlib") is not None)
            if {draws_figures}:
                import matplotlib.pyplot as plt
                plt.figure()

        run_stage(main, draws_figures={draws_figures})
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"output (1, 2) sklearn None matplotlib {draws_figures}" in result.stdout
    # Only a stage's own process: importing vaepipe elsewhere (a notebook, the tests) leaves scikit-learn alone.
    assert importlib.import_module("sklearn") is not None


# Library code in the main thread can swallow a signal's exception (a bare `except:`) or turn it into
# another error: the stage must stop all the same. The program's `except:` stands for that code.
SWALLOWING_LOOP = (Path(__file__).resolve().parent / "programs" / "swallowing_loop.py").read_text()


def test_a_signal_whose_exception_was_swallowed_stops_the_loop_at_its_next_step(tmp_path):
    result = run_script(SWALLOWING_LOOP, tmp_path, "SIGTERM", "pass", "poll")
    assert result.returncode == 143, result.stderr
    assert result.stdout.split("\n")[-2] == "step 2"  # step 3 got the signal and did not finish
    assert ("interrupted by SIGTERM: stage stage stopped and its outputs are unchanged (the next `dvc repro` "
            "runs stage again) (at the next step: library code had swallowed the signal's exception)") in result.stderr


def test_a_signal_lost_in_a_stage_that_ran_to_the_end_still_ends_it_non_zero(tmp_path):
    result = run_script(SWALLOWING_LOOP, tmp_path, "SIGINT", "pass", "nopoll")
    assert "finished" in result.stdout  # nothing polled: the work was done
    assert result.returncode == 130, result.stderr  # so that `dvc repro` does not go on to the next stage
    assert "interrupted by SIGINT while stage stage finished: its outputs are written" in result.stderr


def test_a_signal_that_library_code_turned_into_another_error_is_reported_as_the_signal(tmp_path):
    result = run_script(SWALLOWING_LOOP, tmp_path, "SIGTERM", "systemerror", "nopoll")
    assert result.returncode == 143, result.stderr
    assert "Traceback" not in result.stderr
    assert ("interrupted by SIGTERM: stage stage stopped and its outputs are unchanged (the next `dvc repro` "
            "runs stage again) (it surfaced as SystemError: bad argument)") in result.stderr


def test_fit_with_stop_on_signal_stops_after_the_call_whose_signal_was_swallowed(monkeypatch):
    import keras
    import numpy as np

    from vaepipe.train.callbacks import StopOnSignal

    class SwallowedSignalAtBatch3(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.batches = batch + 1
            if batch == 3:
                try:
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(0.05)
                except:  # noqa: E722 (what a library's bare except does)
                    pass

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    counter = SwallowedSignalAtBatch3()
    monkeypatch.setattr(errors, "_received", None)  # restored afterwards: the signal stays remembered
    with errors.interruptible():
        with pytest.raises(errors.Interrupted) as stopped:
            model.fit(np.zeros((64, 4)), np.zeros(64), batch_size=4, epochs=3, verbose=0,
                      callbacks=[counter, StopOnSignal()])
    assert stopped.value.signum == signal.SIGTERM
    assert counter.batches == 4  # of 16 per epoch: stopped right after the call that got the signal


def test_a_write_refused_by_a_read_only_file_system_is_one_line_naming_the_path(tmp_path):
    """A read-only models/ or artifact directory: one line naming the path and what to do, exit code 3 (a
    DataError), no traceback. A read-only tmpfs, since root (as in CI) writes through any file mode."""
    mount = tmp_path / "ro"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)],
                             capture_output=True, text=True)
    if mounted.returncode:  # skipped only outside CI, as the project's other prerequisites
        reason = f"cannot mount a read-only tmpfs ({mounted.stderr.strip() or 'mount failed'}; needs root)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"missing prerequisite (CI=true, so this fails rather than skips): {reason}", pytrace=False)
        pytest.skip(reason)
    try:
        result = run_script(f"""
            from pathlib import Path
            from vaepipe.process import run_stage

            def main():
                Path({str(mount / "vae.keras")!r}).write_bytes(b"model")

            run_stage(main)
        """, tmp_path)
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: cannot write {mount / 'vae.keras'}: Read-only file system (a read-only directory or file system?): "
        "make it writable, then run `dvc repro` again"]


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_sqlite_store_is_one_line_naming_it(tmp_path, damage):
    """A truncated or overwritten mlflow.db: one line naming the store and what to do, exit code 4."""
    import sqlite3

    db = tmp_path / "mlflow.db"
    with sqlite3.connect(db) as conn:  # a real SQLite file with pages to cut
        conn.execute("CREATE TABLE t (x TEXT)")
        conn.executemany("INSERT INTO t VALUES (?)", [("x" * 500,)] * 200)
    db.write_bytes(db.read_bytes()[:3000] if damage == "truncated" else b"not a database" * 100)
    result = run_script(f"""
        import os
        os.environ["MLFLOW_TRACKING_URI"] = "sqlite:///{db}"
        from vaepipe import tracking
        from vaepipe.process import run_stage

        run_stage(lambda: tracking.connect(write=False))
    """, tmp_path)
    assert result.returncode == 4, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: MLflow store sqlite:///{db} cannot be used: ") and "restore it from a backup" in line


def test_a_locked_sqlite_store_is_one_line_saying_another_process_holds_it(tmp_path, new_mlflow_db):
    import sqlite3

    db = new_mlflow_db(tmp_path / "mlflow.db")  # a real, healthy MLflow store
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process mid-write, for longer than SQLite waits
    try:
        result = run_script(f"""
            import os
            os.environ["MLFLOW_TRACKING_URI"] = "sqlite:///{db}"
            from vaepipe import tracking
            from vaepipe.process import run_stage

            run_stage(lambda: tracking.connect(write=True))
        """, tmp_path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.returncode == 4, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "database is locked" in line and "another process holds it locked" in line, line


def test_the_exit_code_table_lists_exactly_the_codes_errors_defines():
    """docs/reliability.md's "Exit codes" table: one row per code in errors.EXIT_CODES, none other; each
    exception type's code is one of them, and the modules that raise codes 5 and 6 use errors.py's types."""
    from vaepipe.train import callbacks
    from vaepipe.tune import driver

    doc = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
    section = doc.split("## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")]
    assert rows[0] == "code", rows
    codes = [int(cell) for cell in rows[1:]]
    assert codes == sorted(errors.EXIT_CODES), (codes, sorted(errors.EXIT_CODES))
    types = [value for value in vars(errors).values() if isinstance(value, type) and issubclass(value, errors.VaepipeError)]
    assert {kind.exit_code for kind in types} == set(errors.EXIT_CODES) - {errors.EXIT_OK, errors.EXIT_SIGINT,
                                                                           errors.EXIT_SIGTERM}
    assert callbacks.NonFiniteLossError is errors.NonFiniteLossError and driver.SearchFailed is errors.SearchFailed
    assert (errors.EXIT_SIGINT, errors.EXIT_SIGTERM) == (128 + signal.SIGINT, 128 + signal.SIGTERM) == (130, 143)
