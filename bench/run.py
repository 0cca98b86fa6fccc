"""`make bench`: vaepipe's speed against the tutorial's code and against this machine's arithmetic limit.

One run, variants alternated (epoch by epoch, or process by process) so machine drift (other jobs,
thermal, turbo) cancels; every statistic is a median over epochs 2..N (epoch 1 pays tracing and XLA
compilation) or over repeats.

  a. tutorial model, batch 32, three figures: bench/reference_tutorial.py's plain `fit`; vaepipe's
     training loop (compile_for_training + make_datasets + fit, validation included); and vaepipe's real train
     stage, timed as whole `dvc repro -f -s train` processes with N and with 1 epochs in the
     temporary clone of (d): (t_N - t_1) / (N - 1), so start-up cancels. The reference script is
     timed the same way (5 and 1 epochs), alternated with it. Bookkeeping = stage - loop.
  b. MLP 784-512-2-512-784, batch 128: vaepipe's epoch (training + validation pass) vs its FLOPs /
     the best float32 matmul rate measured in the same run (NumPy sgemm or TensorFlow/XLA dot)
  c. importance-sampled NLL, k=1000, full test set: with the MLP model of (b), and with the tutorial
     model (the evaluate stage's own work at the defaults), with the achieved rates
  d. `dvc repro` of the default params in a temporary clone (a git clone with the working tree's
     uncommitted src/, stages/, dvc.yaml and params.yaml on top), per stage, then a no-op `dvc repro`;
     from scratch: the stages' persistent XLA cache is empty (a's stage processes, which run after
     it, find it filled as a user's reruns do; t_N - t_1 cancels it anyway)
  e. peak resident memory of the train stage (from d)
  f. what a search trial costs: `python -m vaepipe.tune` (as `make tune` runs it) on a study of 6
     one-epoch trials of the tutorial model, 2 at a time (learning rate searched, so every trial runs the
     compiled program of the stage alone), against the same one-epoch train stage as a whole process
     (`dvc repro -f -s train`), alone and two at once in two copies of the clone (the contention that 2
     trials at once have on a 2-core machine). Overhead per trial = slot seconds per trial (study wall
     x 2 / 6) - the stage's seconds, against both; before and after the study, so drift shows. Also in CPU
     seconds of the whole process trees (study / 6 - the stage alone): the work a trial adds, which a shared
     machine's load inflates far less than wall time.
  g. a stage process's start-up: `import tensorflow, keras` in a fresh Python, as is, with vaepipe's
     process.skip_unused_libraries("sklearn") (as the plot stage runs) and with ("sklearn", "matplotlib") (the
     other stages), rotated; medians and the savings.
  a_vs. today's train stage against an earlier commit's (`--only-vs REV`, or `--vs REV` in a full run; issue
     28 asks for 59c0b57): both trees' `python stages/train.py` as whole processes, N and 1 epochs each,
     the four processes rotated every repeat, in the same .venv, on the same prepared data (prepared once
     by today's stages/prepare.py), each tree with its own params.yaml (train.epochs set), MLflow store and
     checkpoints, one XLA cache both warmed by an untimed 1-epoch run first. Per tree: (t_N - t_1) / (N - 1),
     the first epoch's and the median later epoch's `epoch_time` of the stage's own train_log.csv; the
     ratios today / REV; and whether the two trees' train_log.csv are equal in every value but epoch_time.

Parts a to c read the arrays prepared by (d)'s `dvc repro -s prepare`, so the bench needs no
prepared data in the working tree. Writes bench/results.json and prints a markdown table.
Usage: python bench/run.py [--epochs N] [--stage-epochs N] [--stage-repeats R] [--vs REV]
                           [--only-search | --only-startup | --only-vs REV [--vs-epochs N] [--vs-repeats R]]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "work"  # scratch, git-ignored
RESULTS = ROOT / "bench" / "results.json"
PARTS = ("a", "b", "c", "c_tutorial", "d", "f", "g", "a_vs")  # results.json's keys of the parts' figures
TRAIN_STAGE = ["dvc", "repro", "-f", "-s", "train"]  # the train stage as a user reruns it
XLA_CACHE = WORK / "xla-cache"  # the stage processes' persistent XLA cache, emptied at the start of each run
VENV_BIN = ROOT / ".venv" / "bin"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(ROOT / "tests" / "e2e"))  # project_copy: the tests' working-tree copy and stage env
sys.path.insert(0, str(ROOT / "src"))  # this tree's vaepipe, not whichever checkout the venv installed editable

import numpy as np  # noqa: E402
from project_copy import clean_env, copy_working_tree  # noqa: E402

TARGETS = {  # name: (comparison, threshold), as issues 5 and 13 state them
    "a_stage_speedup": (">=", 8.0),
    "a_loop_speedup": (">=", 10.0),
    "a_bookkeeping_share": ("<=", 0.10),
    "b_ratio_to_floor": ("<=", 1.5),
    "c_iw_nll_seconds": ("<", 180.0),
    "d_pipeline_seconds": ("<=", 35.0),
    "f_overhead_per_trial_s": ("<=", 5.0),  # issue 22: queueing, DVC and study bookkeeping per trial
    "d_noop_repro_seconds": ("<", 1.0),
    "e_train_peak_rss_gb": ("<", 2.0),
}


# ---------------------------------------------------------------- machine and arithmetic rate


def machine_info() -> dict:
    import keras
    import tensorflow as tf

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__,
            "load_average_at_start": os.getloadavg()}


def matmul_gflops(n: int = 2048, repeats: int = 8) -> float:
    """NumPy (OpenBLAS) float32 n x n matmul rate, GFLOP/s: 2 n^3 flops per product."""
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    a @ b  # warm up threads and caches
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return repeats * 2 * n**3 / (time.perf_counter() - start) / 1e9


def xla_matmul_gflops(n: int = 2048, repeats: int = 8) -> float:
    """TensorFlow/XLA float32 n x n matmul rate, GFLOP/s: `repeats` products in one compiled call."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    a = tf.constant(rng.random((n, n), dtype=np.float32))
    b = tf.constant(rng.random((n, n), dtype=np.float32))

    @tf.function(jit_compile=True)
    def products(a, b):
        # Each product depends on the last (a tiny scale keeps values finite), so none is elided.
        out = a
        for _ in range(repeats):
            out = tf.matmul(out, b) * 1e-3
        return tf.reduce_sum(out)

    products(a, b).numpy()  # compile, warm up
    start = time.perf_counter()
    products(a, b).numpy()
    return repeats * 2 * n**3 / (time.perf_counter() - start) / 1e9


def matmul_rates() -> dict[str, float]:
    return {"numpy": matmul_gflops(), "xla": xla_matmul_gflops()}


def mlp_train_flops_per_example(hidden: int = 512, latent: int = 2, pixels: int = 784) -> dict[str, float]:
    """Matmul FLOPs of one training step per example for the MLP VAE (biases/elementwise ignored).

    Forward multiply-adds: encoder 784*512, two heads 512*2 each, decoder 2*512 and 512*784;
    2 flops per multiply-add. Backward computes, per layer, the weight gradient (same cost as the
    forward matmul) and the input gradient (same cost again): 3x forward in total. The first layer's
    input gradient (d loss / d image) is not needed, so the strict count is 3x forward minus one
    784x512 product; the issue's floor uses the plain 3x, we report both.
    """
    first = pixels * hidden
    forward = 2 * (first + 2 * hidden * latent + latent * hidden + hidden * pixels)
    return {"forward": forward, "three_x_forward": 3 * forward, "strict": 3 * forward - 2 * first}


# ---------------------------------------------------------------- training timings


def load_mnist(prepared_dir: Path) -> dict[str, np.ndarray]:
    """The prepared train, validation and test images as float32 in [0, 1], checked against meta.json."""
    from vaepipe import prepared

    arrays = {}
    for name in ("train", "validation", "test"):
        split = prepared.load_split(prepared_dir / f"{name}.npz")
        prepared.verify_prepared(split, prepared_dir / f"{name}.npz", prepared.read_meta(prepared_dir / "meta.json"))
        arrays[name] = prepared.to_unit_interval(split.images)
    return arrays


class VaepipeTrainer:
    """vaepipe's own training path (compile_for_training + training_batches + fit, validation included), one epoch per call.

    As in the train stage, one `fit` runs all `epochs` over one input iterator. It runs in a thread
    that waits before each epoch until run_epoch() lets it go, so its epochs can alternate with the
    reference's (or a matmul measurement) while nothing of vaepipe runs during theirs.
    """

    def __init__(self, overrides: dict, x_train: np.ndarray, x_val: np.ndarray, epochs: int) -> None:
        import keras
        from reference_tutorial import EpochClock

        from vaepipe.config import parse_params
        from vaepipe.train.callbacks import EpochRandomState
        from vaepipe.train.single_process import batches_per_epoch, compile_for_training, trained_vae, training_batches

        self.params = parse_params(overrides)
        self.epochs, self.epochs_run = epochs, 0
        train = self.params.train
        # As the train stage: batches stacked where compile_for_training says so, each epoch's order from (seed, epoch).
        self.model = compile_for_training(self.params, batches_per_epoch(len(x_train), self.params))
        self.vae = trained_vae(self.model)
        batches = training_batches(self.model, self.params, x_train, x_val, epochs=range(epochs))
        self.clock = EpochClock()
        self._go = threading.Semaphore(0)
        self._done: queue.Queue = queue.Queue()
        trainer = self

        class Gate(keras.callbacks.Callback):  # first callback: wait before the epoch's clock starts
            def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
                trainer._go.acquire()

        class Report(keras.callbacks.Callback):  # last callback: after the clock stopped
            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                trainer._done.put(trainer.clock.seconds[-1])

        def fit() -> None:
            try:
                self.model.fit(batches.train, steps_per_epoch=batches.stacks_per_epoch, validation_data=batches.val,
                             epochs=epochs, callbacks=[Gate(), EpochRandomState(train.seed), self.clock, Report()],
                             shuffle=False, verbose=0)
            except BaseException as error:  # noqa: BLE001 - handed to the caller of run_epoch
                self._done.put(error)

        self._thread = threading.Thread(target=fit, name="vaepipe-fit", daemon=True)
        self._thread.start()

    def run_epoch(self) -> float:
        self._go.release()
        result = self._done.get()
        if isinstance(result, BaseException):
            raise result
        self.epochs_run += 1
        if self.epochs_run == self.epochs:
            self._thread.join()  # fit has returned: the model is free for part c
        return result


class ReferenceTrainer:
    """The tutorial's plain `fit(x, batch_size=32)`, one epoch per call."""

    def __init__(self, x_train: np.ndarray) -> None:
        import reference_tutorial

        self.vae = reference_tutorial.build(seed=42)
        self.x = x_train
        self.clock = reference_tutorial.EpochClock()
        self.epoch = 0

    def run_epoch(self) -> float:
        self.vae.fit(self.x, batch_size=32, epochs=self.epoch + 1, initial_epoch=self.epoch,
                     callbacks=[self.clock], verbose=0)
        self.epoch += 1
        return self.clock.seconds[-1]


def steady(seconds: list[float]) -> float:
    """Median of epochs 2..N: epoch 1 includes tracing and compilation."""
    return statistics.median(seconds[1:])


def part_a(epochs: int, x_train: np.ndarray, x_val: np.ndarray) -> dict:
    reference = ReferenceTrainer(x_train)
    vaepipe = VaepipeTrainer({}, x_train, x_val, epochs)  # params.yaml defaults: the tutorial's model, batch 32
    times: dict[str, list[float]] = {"reference": [], "vaepipe": []}
    for epoch in range(epochs):
        # Swap the order every epoch so neither variant always runs first after the other.
        order = [("reference", reference), ("vaepipe", vaepipe)]
        for name, trainer in order if epoch % 2 == 0 else order[::-1]:
            times[name].append(trainer.run_epoch())
        print(f"  a epoch {epoch + 1}: reference {times['reference'][-1]:.2f} s, vaepipe {times['vaepipe'][-1]:.2f} s",
              flush=True)
    ref, vp = steady(times["reference"]), steady(times["vaepipe"])
    paired = [r / v for r, v in zip(times["reference"][1:], times["vaepipe"][1:], strict=True)]
    return {"seconds_per_epoch": times, "median_reference_s": ref, "median_vaepipe_s": vp,
            "speedup_ratio_of_medians": ref / vp, "speedup_median_of_paired": statistics.median(paired),
            "vaepipe_steps_per_epoch": -(-len(x_train) // 32), "n_train": len(x_train), "n_validation": len(x_val)}


MLP_PARAMS = {"model": {"arch": "mlp", "hidden": [512], "latent_dim": 2},
              "train": {"batch_size": 128, "beta": 1.0}}


def part_b(epochs: int, x_train: np.ndarray, x_val: np.ndarray) -> tuple[dict, VaepipeTrainer]:
    trainer = VaepipeTrainer(MLP_PARAMS, x_train, x_val, epochs)
    flops = mlp_train_flops_per_example()
    # The timed epoch is what the train stage runs: the training steps and the validation pass
    # (one forward per validation image), so the floor counts the arithmetic of both.
    validation_gflop = flops["forward"] * len(x_val) / 1e9
    epoch_gflop = flops["three_x_forward"] * len(x_train) / 1e9 + validation_gflop
    strict_gflop = flops["strict"] * len(x_train) / 1e9 + validation_gflop
    times, rates = [], []
    for epoch in range(epochs):
        rates.append(matmul_rates())  # alternate with the epochs: all see the same machine state
        times.append(trainer.run_epoch())
        print(f"  b epoch {epoch + 1}: vaepipe {times[-1]:.2f} s, matmul NumPy {rates[-1]['numpy']:.0f} / "
              f"XLA {rates[-1]['xla']:.0f} GFLOP/s", flush=True)
    medians = {name: statistics.median(rate[name] for rate in rates) for name in ("numpy", "xla")}
    winner = max(medians, key=medians.get)
    rate = medians[winner]  # the floor is the best measured rate: the ceiling for any code here
    floor = epoch_gflop / rate
    vp = steady(times)
    return {"seconds_per_epoch": times, "matmul_gflops": rates, "median_matmul_gflops_by_library": medians,
            "matmul_winner": winner, "median_matmul_gflops": rate,
            "epoch_gflop": epoch_gflop, "validation_gflop": validation_gflop,
            "epoch_gflop_strict": strict_gflop,
            "floor_s": floor, "median_vaepipe_s": vp, "ratio_to_floor": vp / floor,
            "ratio_to_floor_strict": vp / (strict_gflop / rate),
            "ratio_to_train_only_floor": vp / ((epoch_gflop - validation_gflop) / rate),
            "achieved_gflops": epoch_gflop / vp}, trainer


def part_c(trainer: VaepipeTrainer, x_test: np.ndarray, k: int = 1000) -> dict:
    from vaepipe.evaluation import iw_log_likelihood

    rate_before = max(matmul_rates().values())
    start = time.perf_counter()
    log_px = iw_log_likelihood(trainer.vae, x_test, k=k, seed=0)
    seconds = time.perf_counter() - start
    # Decoder matmul flops alone: (2*512 + 512*784) multiply-adds per sample, 2 flops each.
    gflop = 2 * (2 * 512 + 512 * 784) * k * len(x_test) / 1e9
    return {"seconds": seconds, "k": k, "n_test": len(x_test), "test_nll_iw": float(-np.mean(log_px)),
            "decoder_gflop": gflop, "achieved_gflops": gflop / seconds, "matmul_gflops_before": rate_before,
            "floor_s": gflop / rate_before}


def part_c_tutorial(trainer: VaepipeTrainer, x_test: np.ndarray, k: int = 1000) -> dict:
    """The evaluate stage's IW NLL at the defaults (tutorial model): its arithmetic is elementwise.

    Per sample: the decoder's 2x784 matmul (3136 flop) and, per pixel, the Bernoulli log-likelihood
    max(l,0) - l x + log1p(exp(-|l|)), counted as 8 flop + 2 transcendentals. Reported as achieved
    GFLOP/s and pixel terms per second, the rate at which this work can run at all.
    """
    from vaepipe.evaluation import iw_log_likelihood

    start = time.perf_counter()
    iw_log_likelihood(trainer.vae, x_test, k=k, seed=0)
    seconds = time.perf_counter() - start
    samples = k * len(x_test)
    gflop = samples * (2 * 2 * 784 + 8 * 784) / 1e9
    return {"seconds": seconds, "k": k, "n_test": len(x_test), "gflop": gflop, "achieved_gflops": gflop / seconds,
            "pixel_terms_per_s": samples * 784 / seconds}


# ---------------------------------------------------------------- dvc pipeline in a temporary clone


def stage_env() -> dict[str, str]:
    return clean_env(VENV_BIN, TF_CPP_MIN_LOG_LEVEL="2",
                     TF_XLA_FLAGS=f"--tf_xla_persistent_cache_directory={XLA_CACHE}")  # not the user's warm cache


# Runs argv[2:] and writes the largest peak RSS among its waited-for descendants (KiB) to argv[1].
# A small middleman is needed: a child spawned straight from this process (vfork/fork + exec)
# inherits this process's peak RSS as its own ru_maxrss (Linux carries the high-water mark across
# exec), so `dvc repro` would report the bench's multi-GB size instead of the stage's.
_RSS_WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[2:])\n"
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(code)\n"
)


def timed_process(command: list[str], cwd: Path, **env: str) -> dict:
    """Run a command (with `env` added to stage_env()); wall seconds, CPU seconds of its whole process tree
    (every thread of every process it waited for: what a shared machine's load does not inflate much) and the
    peak RSS of the largest process in its tree."""
    import resource

    rss_file = WORK / "peak_rss_kib"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(WORK / "dvc.log", "ab") as log:
        process = subprocess.run([sys.executable, "-c", _RSS_WRAPPER, str(rss_file), *command], cwd=cwd,
                                 env={**stage_env(), **env}, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}); see {WORK / 'dvc.log'}")
    return {"seconds": seconds, "cpu_seconds": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
            "peak_rss_gb": int(rss_file.read_text()) * 1024 / 1e9}  # Linux: KiB


def clone_working_tree(dest: Path) -> None:
    """git clone, then overlay the working tree's uncommitted source files so the bench measures them."""
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    copy_working_tree(ROOT, dest, ["src", "stages", "dvc.yaml", "params.yaml"])


def set_train_epochs(repo: Path, epochs: int | None) -> None:
    """The clone's params.yaml with train.epochs = epochs (None: as the working tree has it)."""
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    if epochs is not None:
        params["train"]["epochs"] = epochs
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def part_d_prepare(repo: Path) -> dict:
    clone_working_tree(repo)
    info = timed_process(["dvc", "repro", "-s", "prepare"], repo)
    print(f"  d dvc repro -s prepare: {info['seconds']:.1f} s", flush=True)
    return info


def part_d(repo: Path, prepare: dict, noop_repeats: int = 3) -> dict:
    """The default pipeline after prepare, one stage per process (wall time each), then no-op reruns."""
    stages = {"prepare": prepare}
    for stage in ("train", "evaluate", "plot"):
        stages[stage] = timed_process(["dvc", "repro", "-s", stage], repo)
        print(f"  d dvc repro -s {stage}: {stages[stage]['seconds']:.1f} s", flush=True)
    noop = [timed_process(["dvc", "repro"], repo)["seconds"] for _ in range(noop_repeats)]
    print(f"  d no-op dvc repro: {', '.join(f'{s:.2f}' for s in noop)} s", flush=True)
    return {"stages": stages, "total_s": sum(s["seconds"] for s in stages.values()),
            "pipeline_s": sum(stages[name]["seconds"] for name in ("train", "evaluate", "plot")),
            "noop_s": noop, "median_noop_s": statistics.median(noop),
            # The process tree of `dvc repro -s train`: dvc itself and `python stages/train.py`.
            "train_peak_rss_gb": stages["train"]["peak_rss_gb"]}


def part_a_stage(repo: Path, epochs: int, repeats: int, reference_epochs: int = 5) -> dict:
    """Seconds per epoch of whole processes: the train stage and the reference script, N vs 1 epochs.

    Each repeat runs the four processes in a rotated order; per repeat, (t_N - t_1) / (N - 1).
    """
    reference = [sys.executable, str(ROOT / "bench" / "reference_tutorial.py")]
    prepared_dir = str(repo / "data" / "prepared")
    runs = {
        "stage_n": lambda: (set_train_epochs(repo, epochs), timed_process(TRAIN_STAGE, repo))[1],
        "stage_1": lambda: (set_train_epochs(repo, 1), timed_process(TRAIN_STAGE, repo))[1],
        "reference_n": lambda: timed_process([*reference, str(reference_epochs), prepared_dir], repo),
        "reference_1": lambda: timed_process([*reference, "1", prepared_dir], repo),
    }
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    try:
        for repeat in range(repeats):
            for name in names[repeat % len(names):] + names[:repeat % len(names)]:
                seconds[name].append(runs[name]()["seconds"])
            print(f"  a stage repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in seconds.items()),
                  flush=True)
    finally:
        set_train_epochs(repo, None)
    stage = [(n - one) / (epochs - 1) for n, one in zip(seconds["stage_n"], seconds["stage_1"], strict=True)]
    ref = [(n - one) / (reference_epochs - 1)
           for n, one in zip(seconds["reference_n"], seconds["reference_1"], strict=True)]
    return {"stage_epochs": epochs, "reference_epochs": reference_epochs, "process_seconds": seconds,
            "stage_s_per_epoch": stage, "reference_process_s_per_epoch": ref,
            "median_stage_s": statistics.median(stage), "median_reference_process_s": statistics.median(ref)}


# ---------------------------------------------------------------- a search's trials


SEARCH_TRIALS, SEARCH_JOBS = 6, 2


def write_bench_search(repo: Path, study: str = "bench", seed: int = 0) -> Path:
    import yaml

    search = {"study": study, "preset": None, "fixed": {"train.epochs": 1},
              "space": {"train.learning_rate": {"float": [1.0e-4, 1.0e-2], "log": True}},
              "objective": {"val_loss": "minimize"}, "trials": SEARCH_TRIALS, "jobs": SEARCH_JOBS,
              "sampler": "random", "pruner": "none", "final": 0, "seed": seed}
    path = repo / f"{study}_search.yaml"
    path.write_text(yaml.safe_dump(search, sort_keys=False))
    return path


def stage_pair(repo: Path, twin: Path) -> float:
    """Wall seconds of two one-epoch train stages started at once, one in each copy."""
    start = time.perf_counter()
    with open(WORK / "dvc.log", "ab") as log:
        processes = [subprocess.Popen(TRAIN_STAGE, cwd=where, env=stage_env(),
                                      stdout=log, stderr=subprocess.STDOUT) for where in (repo, twin)]
        codes = [process.wait() for process in processes]
    if any(codes):
        raise RuntimeError(f"two train stages at once failed ({codes}); see {WORK / 'dvc.log'}")
    return time.perf_counter() - start


def part_f(repo: Path, repeats: int = 2) -> dict:
    """A study of 6 one-epoch trials, 2 at a time, against the one-epoch train stage alone and in pairs."""
    set_train_epochs(repo, 1)
    env = stage_env()
    for command in (["git", "add", "-A"], ["git", "commit", "-qm", "bench: the search's baseline"]):
        subprocess.run(command, cwd=repo, env=env, check=True, capture_output=True)
    timed_process(TRAIN_STAGE, repo)  # warm-up: fills the XLA cache the trials read
    twin = repo.parent / "twin"
    shutil.copytree(repo, twin, symlinks=True)
    search = write_bench_search(repo)
    alone: list[float] = []
    alone_cpu: list[float] = []
    pairs: list[float] = []

    def baselines(label: str) -> None:
        for _ in range(repeats):
            run = timed_process(TRAIN_STAGE, repo)
            alone.append(run["seconds"])
            alone_cpu.append(run["cpu_seconds"])
            pairs.append(stage_pair(repo, twin))
        print(f"  f stage {label} the study: alone {', '.join(f'{s:.1f}' for s in alone[-repeats:])} s, "
              f"two at once {', '.join(f'{s:.1f}' for s in pairs[-repeats:])} s", flush=True)

    baselines("before")
    # The clone's own src: the venv's vaepipe is an editable install of the main checkout, which would
    # otherwise be the driver (and each trial's dvc_one) measured, whatever the working tree holds.
    study = timed_process([str(VENV_BIN / "python"), "-m", "vaepipe.tune", "--search", str(search)], repo,
                          PYTHONPATH=str(repo / "src"))
    print(f"  f study of {SEARCH_TRIALS} trials, {SEARCH_JOBS} at a time: {study['seconds']:.1f} s "
          f"({study['cpu_seconds']:.1f} CPU s)", flush=True)
    # The same study with each trial's DVC process spawned as its own Python (no launcher, tune/launcher.py);
    # another seed, so that its trials train rather than come back from DVC's run cache.
    spawn_search = write_bench_search(repo, "bench-spawn", seed=1)
    spawned = timed_process([str(VENV_BIN / "python"), "-m", "vaepipe.tune", "--search", str(spawn_search)], repo,
                            PYTHONPATH=str(repo / "src"), VAEPIPE_TRIAL_SPAWN="1")
    print(f"  f the same, each trial's DVC spawned (no launcher): {spawned['seconds']:.1f} s "
          f"({spawned['cpu_seconds']:.1f} CPU s)", flush=True)
    baselines("after")
    slot_s = study["seconds"] * SEARCH_JOBS / SEARCH_TRIALS
    stage_alone, stage_pair_s = statistics.median(alone), statistics.median(pairs)
    return {"trials": SEARCH_TRIALS, "jobs": SEARCH_JOBS, "study_s": study["seconds"],
            "seconds_per_trial": study["seconds"] / SEARCH_TRIALS, "slot_s_per_trial": slot_s,
            "stage_alone_s": alone, "stage_pair_s": pairs, "median_stage_alone_s": stage_alone,
            "median_stage_pair_s": stage_pair_s, "overhead_per_trial_s": slot_s - stage_alone,
            "overhead_per_trial_vs_pair_s": slot_s - stage_pair_s,
            # The same in CPU seconds (all processes, all threads): the work a trial adds, whatever the load.
            "study_cpu_s": study["cpu_seconds"], "stage_alone_cpu_s": alone_cpu,
            "median_stage_alone_cpu_s": statistics.median(alone_cpu),
            "cpu_overhead_per_trial_s": study["cpu_seconds"] / SEARCH_TRIALS - statistics.median(alone_cpu),
            "spawn_study_s": spawned["seconds"], "spawn_study_cpu_s": spawned["cpu_seconds"],
            "spawn_overhead_per_trial_s": spawned["seconds"] * SEARCH_JOBS / SEARCH_TRIALS - stage_alone,
            "spawn_cpu_overhead_per_trial_s": spawned["cpu_seconds"] / SEARCH_TRIALS - statistics.median(alone_cpu),
            "load_average_at_end": os.getloadavg()}


STARTUP = "import tensorflow, keras"
SKIPPING = "from vaepipe.process import skip_unused_libraries; skip_unused_libraries({}); " + STARTUP
STARTUP_VARIANTS = {"plain": STARTUP,  # no library marked absent
                    "skipping": SKIPPING.format("'sklearn'"),  # the plot stage
                    "skipping_matplotlib": SKIPPING.format("'sklearn', 'matplotlib'")}  # prepare, train, evaluate


def part_g(repeats: int = 7) -> dict:
    """A stage's start-up as whole processes: TensorFlow and Keras imported as is, with scikit-learn marked
    absent (the plot stage), and with scikit-learn and matplotlib marked absent (the other stages),
    rotated so drift cancels."""
    env = {**stage_env(), "PYTHONPATH": str(ROOT / "src")}
    timings: dict[str, list[float]] = {variant: [] for variant in STARTUP_VARIANTS}
    for _ in range(repeats):
        for variant, code in STARTUP_VARIANTS.items():
            start = time.perf_counter()
            subprocess.run([str(VENV_BIN / "python"), "-c", code], env=env, check=True, capture_output=True)
            timings[variant].append(time.perf_counter() - start)
    median = {variant: statistics.median(times) for variant, times in timings.items()}
    plain, skipping, both = median["plain"], median["skipping"], median["skipping_matplotlib"]
    print(f"  g start-up: {plain:.2f} s plain, {skipping:.2f} s without scikit-learn, {both:.2f} s without "
          "scikit-learn and matplotlib", flush=True)
    return {"repeats": repeats, "plain_s": timings["plain"], "skipping_s": timings["skipping"],
            "skipping_matplotlib_s": timings["skipping_matplotlib"],
            "median_plain_s": plain, "median_skipping_s": skipping, "saving_s": plain - skipping,
            "ratio": skipping / plain, "median_skipping_matplotlib_s": both, "saving_matplotlib_s": plain - both,
            "ratio_matplotlib": both / plain}


# ---------------------------------------------------------------- today's train stage against an earlier commit's


VS_EPOCHS, VS_REPEATS = 21, 3


def tree_at(rev: str, dest: Path) -> None:
    """What a stage runs of commit `rev` (src/, stages/, dvc.yaml, params.yaml), exported into dest."""
    import io
    import tarfile

    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "src", "stages", "dvc.yaml",
                              "params.yaml"], capture_output=True, check=True).stdout
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")


def set_epochs_line(tree: Path, epochs: int) -> None:
    """train.epochs in a tree's own params.yaml, edited in place (every other param, comment and name of
    that commit's schema kept: a commit's params.yaml may not parse under today's schema)."""
    import re

    params = tree / "params.yaml"
    text, count = re.subn(r"(?m)^(  epochs:\s*)\d+", rf"\g<1>{epochs}", params.read_text())
    if count != 1:
        raise RuntimeError(f"{params}: no single `  epochs: N` line under train")
    params.write_text(text)


def read_epoch_log(tree: Path) -> tuple[list[str], list[list[str]]]:
    import csv

    lines = list(csv.reader((tree / "train_log.csv").read_text().splitlines()))
    return lines[0], lines[1:]


def run_stage_process(tree: Path, epochs: int) -> dict:
    """`python stages/train.py` of `tree` with its own src on PYTHONPATH: wall seconds and its epoch log."""
    set_epochs_line(tree, epochs)
    import resource

    env = {**stage_env(), "PYTHONPATH": str(tree / "src")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(WORK / "vs.log", "ab") as log:
        process = subprocess.run([str(VENV_BIN / "python"), "stages/train.py"], cwd=tree, env=env, stdout=log,
                                 stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime  # the stage's threads, all cores
    if process.returncode != 0:
        raise RuntimeError(f"{tree.name}: stages/train.py failed ({process.returncode}); see {WORK / 'vs.log'}")
    header, rows = read_epoch_log(tree)
    if len(rows) != epochs:
        raise RuntimeError(f"{tree.name}: train_log.csv has {len(rows)} rows, not {epochs}")
    column = header.index("epoch_time")
    return {"seconds": seconds, "cpu_seconds": cpu, "epoch_time": [float(row[column]) for row in rows],
            "header": header, "rows": rows}


def same_numbers(first: dict, second: dict) -> dict:
    """Whether two epoch logs hold the same values (as written, so bit for bit) in every column but epoch_time."""
    columns = [name for name in first["header"] if name != "epoch_time"]
    differing = [name for name in columns if name not in second["header"]
                 or [row[first["header"].index(name)] for row in first["rows"]]
                 != [row[second["header"].index(name)] for row in second["rows"]]]
    return {"columns": columns, "differing": differing, "identical": not differing}


def part_a_vs(rev: str, epochs: int = VS_EPOCHS, repeats: int = VS_REPEATS) -> dict:
    """Today's train stage (the working tree) against commit `rev`'s, alternated as whole processes."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", f"{rev}^{{commit}}"],
                            capture_output=True, text=True, check=True).stdout.strip()
    (WORK / "vs.log").write_bytes(b"")
    with tempfile.TemporaryDirectory(prefix="vaepipe-vs-", dir=WORK) as tmp:
        trees = {"today": Path(tmp) / "today", commit: Path(tmp) / commit}
        trees["today"].mkdir()
        copy_working_tree(ROOT, trees["today"], ["src", "stages", "dvc.yaml", "params.yaml"])
        tree_at(commit, trees[commit])
        env = {**stage_env(), "PYTHONPATH": str(trees["today"] / "src")}
        start = time.perf_counter()
        with open(WORK / "vs.log", "ab") as log:  # today's prepare: both trees read these very files
            subprocess.run([str(VENV_BIN / "python"), "stages/prepare.py"], cwd=trees["today"], env=env, stdout=log,
                           stderr=subprocess.STDOUT, check=True)
        print(f"  a_vs prepare: {time.perf_counter() - start:.1f} s", flush=True)
        (trees[commit] / "data").mkdir()
        (trees[commit] / "data" / "prepared").symlink_to(trees["today"] / "data" / "prepared")
        for name, tree in trees.items():  # untimed: each tree's MLflow store created, its XLA programs cached
            warm = run_stage_process(tree, 1)
            print(f"  a_vs warm-up {name}: {warm['seconds']:.1f} s", flush=True)
        runs = [(name, n) for n in (epochs, 1) for name in trees]
        results: dict[tuple[str, int], list[dict]] = {run: [] for run in runs}
        for repeat in range(repeats):
            for name, n in runs[repeat % len(runs):] + runs[:repeat % len(runs)]:  # rotated each repeat
                results[(name, n)].append(run_stage_process(trees[name], n))
            print(f"  a_vs repeat {repeat + 1}: " + ", ".join(
                f"{name} {n} ep {results[(name, n)][-1]['seconds']:.1f} s" for name, n in runs), flush=True)
    figures = {}
    for name in trees:
        long, one = results[(name, epochs)], results[(name, 1)]
        per_epoch = [(a["seconds"] - b["seconds"]) / (epochs - 1) for a, b in zip(long, one, strict=True)]
        cpu_per_epoch = [(a["cpu_seconds"] - b["cpu_seconds"]) / (epochs - 1) for a, b in zip(long, one, strict=True)]
        first = [run["epoch_time"][0] for run in long + one]
        later = [t for run in long for t in run["epoch_time"][1:]]
        figures[name] = {"process_s": {str(epochs): [r["seconds"] for r in long], "1": [r["seconds"] for r in one]},
                         "cpu_s": {str(epochs): [r["cpu_seconds"] for r in long], "1": [r["cpu_seconds"] for r in one]},
                         "s_per_epoch": per_epoch, "median_s_per_epoch": statistics.median(per_epoch),
                         "cpu_s_per_epoch": cpu_per_epoch, "median_cpu_s_per_epoch": statistics.median(cpu_per_epoch),
                         "first_epoch_time_s": first, "median_first_epoch_time_s": statistics.median(first),
                         "median_epoch_time_s": statistics.median(later),
                         "median_process_1_epoch_s": statistics.median(r["seconds"] for r in one)}
    today, then = figures["today"], figures[commit]
    ratios = {key: today[key] / then[key] for key in ("median_s_per_epoch", "median_cpu_s_per_epoch",
                                                       "median_first_epoch_time_s", "median_epoch_time_s",
                                                       "median_process_1_epoch_s")}
    paired = [t / o for t, o in zip(today["s_per_epoch"], then["s_per_epoch"], strict=True)]
    numbers = same_numbers(results[("today", epochs)][0], results[(commit, epochs)][0])
    print(f"  a_vs today / {commit}: {ratios['median_s_per_epoch']:.2f}x per epoch, "
          f"{ratios['median_epoch_time_s']:.2f}x epoch_time, {ratios['median_first_epoch_time_s']:.2f}x first epoch; "
          f"epoch logs {'identical' if numbers['identical'] else 'DIFFER in ' + ', '.join(numbers['differing'])}",
          flush=True)
    return {"rev": commit, "epochs": epochs, "repeats": repeats, "trees": figures, "ratios_today_over_rev": ratios,
            "paired_s_per_epoch_ratios": paired, "epoch_logs": numbers,
            "load_average_at_end": os.getloadavg()}


# ---------------------------------------------------------------- report


def verdict(name: str, value: float) -> str:
    op, limit = TARGETS[name]
    ok = {">=": value >= limit, "<=": value <= limit, "<": value < limit}[op]
    return f"{'PASS' if ok else 'FAIL'} ({op} {limit:g})"


def summarize_a(a: dict, stage: dict) -> None:
    """Ratios of part a: stage and loop against the reference fit, and the stage's bookkeeping share."""
    ref, loop, st = a["median_reference_s"], a["median_vaepipe_s"], stage["median_stage_s"]
    a["stage"] = stage
    a["stage_speedup"] = ref / st
    a["loop_speedup"] = ref / loop
    a["bookkeeping_s"] = st - loop
    a["bookkeeping_share"] = (st - loop) / st
    a["stage_speedup_vs_reference_process"] = stage["median_reference_process_s"] / st


def table(results: dict) -> str:
    a, b, c, ct, d, f, g, a_vs = (results.get(key) for key in PARTS)
    cpu = results["machine"]["cpu"]
    rows = [f"| measurement ({cpu}, {results['machine']['cores']} cores) | median | target |", "|---|---|---|"]
    if a:
        rows += [f"| a. reference tutorial `fit`, batch 32 | {a['median_reference_s']:.2f} s/epoch | |",
                 f"| a. vaepipe training loop, tutorial model, batch 32 | {a['median_vaepipe_s']:.3f} s/epoch | |"]
        if "stage" in a:
            st = a["stage"]
            rows += [f"| a. vaepipe train stage (`dvc repro -f -s train`, {st['stage_epochs']} vs 1 epochs) | "
                     f"{st['median_stage_s']:.3f} s/epoch | |",
                     f"| a. reference script as whole processes ({st['reference_epochs']} vs 1 epochs) | "
                     f"{st['median_reference_process_s']:.2f} s/epoch | |",
                     f"| a. stage speedup (reference `fit` / stage) | {a['stage_speedup']:.2f}x "
                     f"(vs reference process {a['stage_speedup_vs_reference_process']:.2f}x) | "
                     f"{verdict('a_stage_speedup', a['stage_speedup'])} |"]
        rows.append(f"| a. loop speedup (reference `fit` / loop) | {a['loop_speedup']:.2f}x | "
                    f"{verdict('a_loop_speedup', a['loop_speedup'])} |")
        if "stage" in a:
            rows.append(f"| a. bookkeeping (stage - loop) / stage | {a['bookkeeping_s'] * 1000:.0f} ms/epoch, "
                        f"{100 * a['bookkeeping_share']:.1f} % | "
                        f"{verdict('a_bookkeeping_share', a['bookkeeping_share'])} |")
    if a_vs:
        rows += table_a_vs(a_vs)
    if b:
        rates = b["median_matmul_gflops_by_library"]
        rows += [f"| b. float32 2048^3 matmul rate: NumPy / TensorFlow-XLA | {rates['numpy']:.0f} / {rates['xla']:.0f} "
                 f"GFLOP/s ({'NumPy' if b['matmul_winner'] == 'numpy' else 'XLA'} wins) | |",
                 f"| b. MLP-512 floor ({b['epoch_gflop']:.0f} GFLOP/epoch, validation included) | "
                 f"{b['floor_s']:.2f} s/epoch | |",
                 f"| b. vaepipe MLP-512, batch 128 | {b['median_vaepipe_s']:.2f} s/epoch "
                 f"({b['achieved_gflops']:.0f} GFLOP/s) | |",
                 f"| b. vaepipe / floor | {b['ratio_to_floor']:.2f}x (strict count {b['ratio_to_floor_strict']:.2f}x) | "
                 f"{verdict('b_ratio_to_floor', b['ratio_to_floor'])} |"]
    if c:
        rows += [f"| c. IW NLL k={c['k']}, {c['n_test']} test images, MLP-512 | {c['seconds']:.1f} s "
                 f"(floor {c['floor_s']:.0f} s, {c['achieved_gflops']:.0f} GFLOP/s) | "
                 f"{verdict('c_iw_nll_seconds', c['seconds'])} |"]
    if ct:
        rows.append(f"| c. IW NLL k={ct['k']}, tutorial model (the evaluate stage's) | {ct['seconds']:.1f} s "
                    f"({ct['achieved_gflops']:.1f} GFLOP/s, {ct['pixel_terms_per_s'] / 1e9:.2f} G pixel terms/s) | |")
    if d:
        for stage, info in d["stages"].items():
            rows.append(f"| d. `dvc repro -s {stage}` | {info['seconds']:.1f} s | |")
        rows += [f"| d. default pipeline after prepare (train + evaluate + plot) | {d['pipeline_s']:.1f} s | "
                 f"{verdict('d_pipeline_seconds', d['pipeline_s'])} |",
                 f"| d. no-op `dvc repro` | {d['median_noop_s']:.2f} s | "
                 f"{verdict('d_noop_repro_seconds', d['median_noop_s'])} |",
                 f"| e. train stage peak RSS | {d['train_peak_rss_gb']:.2f} GB | "
                 f"{verdict('e_train_peak_rss_gb', d['train_peak_rss_gb'])} |"]
    if f:
        rows += [f"| f. study of {f['trials']} one-epoch trials, {f['jobs']} at a time (`python -m vaepipe.tune`) | "
                 f"{f['study_s']:.1f} s ({f['seconds_per_trial']:.1f} s/trial, {f['slot_s_per_trial']:.1f} slot s/trial) | |",
                 f"| f. one-epoch train stage (`dvc repro -f -s train`): alone / two at once | "
                 f"{f['median_stage_alone_s']:.1f} s / {f['median_stage_pair_s']:.1f} s | |",
                 f"| f. search overhead per trial (slot s - stage alone; - stage two at once) | "
                 f"{f['overhead_per_trial_s']:.1f} s; {f['overhead_per_trial_vs_pair_s']:.1f} s | "
                 f"{verdict('f_overhead_per_trial_s', f['overhead_per_trial_s'])} |"]
        if "cpu_overhead_per_trial_s" in f:
            rows.append(f"| f. CPU seconds (all processes): study / {f['trials']} - stage alone | "
                        f"{f['study_cpu_s'] / f['trials']:.1f} - {f['median_stage_alone_cpu_s']:.1f} = "
                        f"{f['cpu_overhead_per_trial_s']:.1f} s per trial | |")
        if "spawn_study_s" in f:
            rows.append(f"| f. the same study, trials' DVC spawned, not forked from the launcher: study; overhead "
                        f"per trial; CPU overhead per trial | {f['spawn_study_s']:.1f} s; "
                        f"{f['spawn_overhead_per_trial_s']:.1f} s; {f['spawn_cpu_overhead_per_trial_s']:.1f} s | |")
    if g:
        rows.append(f"| g. stage start-up (`import tensorflow, keras`): plain / scikit-learn skipped | "
                    f"{g['median_plain_s']:.2f} s / {g['median_skipping_s']:.2f} s (saves {g['saving_s']:.2f} s, "
                    f"{g['ratio']:.2f}x) | |")
        if "median_skipping_matplotlib_s" in g:
            rows.append(f"| g. ... scikit-learn and matplotlib skipped (prepare, train, evaluate) | "
                        f"{g['median_skipping_matplotlib_s']:.2f} s (saves {g['saving_matplotlib_s']:.2f} s, "
                        f"{g['ratio_matplotlib']:.2f}x) | |")
    return "\n".join(rows)


def table_a_vs(v: dict) -> list[str]:
    rev, n = v["rev"], v["epochs"]
    today, then, ratio = v["trees"]["today"], v["trees"][rev], v["ratios_today_over_rev"]
    same = "equal" if v["epoch_logs"]["identical"] else "DIFFER in " + ", ".join(v["epoch_logs"]["differing"])
    return [f"| a_vs. train stage per epoch, (t_{n} - t_1) / {n - 1} as processes: today / {rev} | "
            f"{today['median_s_per_epoch']:.3f} / {then['median_s_per_epoch']:.3f} s "
            f"({ratio['median_s_per_epoch']:.2f}x) | |",
            f"| a_vs. CPU seconds per epoch (all threads), same processes: today / {rev} | "
            f"{today['median_cpu_s_per_epoch']:.3f} / {then['median_cpu_s_per_epoch']:.3f} s "
            f"({ratio['median_cpu_s_per_epoch']:.2f}x) | |",
            f"| a_vs. the stage's epoch_time, epochs 2..{n}: today / {rev} | {today['median_epoch_time_s']:.3f} / "
            f"{then['median_epoch_time_s']:.3f} s ({ratio['median_epoch_time_s']:.2f}x) | |",
            f"| a_vs. first epoch's epoch_time (compile from a warm XLA cache): today / {rev} | "
            f"{today['median_first_epoch_time_s']:.2f} / {then['median_first_epoch_time_s']:.2f} s "
            f"({ratio['median_first_epoch_time_s']:.2f}x) | |",
            f"| a_vs. one-epoch process: today / {rev} | {today['median_process_1_epoch_s']:.1f} / "
            f"{then['median_process_1_epoch_s']:.1f} s ({ratio['median_process_1_epoch_s']:.2f}x) | |",
            f"| a_vs. epoch logs of the two trees, all but epoch_time ({v['repeats']} repeats) | {same} | |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="epochs per in-process variant (>= 4; epoch 1 is dropped)")
    parser.add_argument("--stage-epochs", type=int, default=41, help="N of the train stage's N-vs-1-epoch processes")
    parser.add_argument("--stage-repeats", type=int, default=3, help="alternated repeats of the stage timing")
    parser.add_argument("--only-search", action="store_true",
                        help="part f alone (after d's prepare); the other parts' results are kept from the last run")
    parser.add_argument("--only-startup", action="store_true",
                        help="part g alone; the other parts' results are kept from the last run")
    parser.add_argument("--vs", metavar="REV", help="add part a_vs to a full run: today's train stage against REV's")
    parser.add_argument("--only-vs", metavar="REV", help="part a_vs alone, against commit REV (issue 28: 59c0b57); "
                        "the other parts' results are kept from the last run")
    parser.add_argument("--vs-epochs", type=int, default=VS_EPOCHS, help="N of a_vs's N-vs-1-epoch processes")
    parser.add_argument("--vs-repeats", type=int, default=VS_REPEATS, help="rotated repeats of a_vs's four processes")
    args = parser.parse_args()
    if args.epochs < 4 or args.stage_epochs < 2 or args.stage_repeats < 1 or args.vs_epochs < 3 or args.vs_repeats < 1:
        parser.error("--epochs must be at least 4, --stage-epochs at least 2, --stage-repeats at least 1, "
                     "--vs-epochs at least 3, --vs-repeats at least 1")
    if sum(map(bool, (args.only_search, args.only_startup, args.only_vs))) > 1:
        parser.error("--only-search, --only-startup and --only-vs run one part each: give one")
    started = time.perf_counter()
    results: dict = {"machine": machine_info(), "epochs": args.epochs}
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "dvc.log").write_bytes(b"")
    shutil.rmtree(XLA_CACHE, ignore_errors=True)  # (d) runs from scratch: it compiles every XLA program
    if args.only_startup:
        keep_earlier_parts(results)
        print("g. a stage process's start-up, with and without scikit-learn", flush=True)
        results["g"] = part_g()
        finish(results, started)
        return
    if args.only_vs:
        keep_earlier_parts(results)
        run_part_a_vs(results, args.only_vs, args)
        finish(results, started)
        return
    with tempfile.TemporaryDirectory(prefix="vaepipe-bench-", dir=WORK) as tmp:
        repo = Path(tmp) / "repo"
        print("d. dvc repro -s prepare in a temporary clone", flush=True)
        prepare = part_d_prepare(repo)
        if args.only_search:
            keep_earlier_parts(results)
        else:
            run_parts_a_to_e(args, results, repo, prepare)
        print("f. a search's trials against the train stage alone and two at once", flush=True)
        results["f"] = part_f(repo)
    if not args.only_search:
        print("g. a stage process's start-up, with and without scikit-learn", flush=True)
        results["g"] = part_g()
        if args.vs:
            run_part_a_vs(results, args.vs, args)
    finish(results, started)


def run_part_a_vs(results: dict, rev: str, args: argparse.Namespace) -> None:
    print(f"a_vs. today's train stage against {rev}'s, {args.vs_epochs} vs 1 epochs as processes, "
          f"{args.vs_repeats} rotated repeats", flush=True)
    results["a_vs"] = part_a_vs(rev, args.vs_epochs, args.vs_repeats)


def keep_earlier_parts(results: dict) -> None:
    """For a run of one part: the other parts' figures stay those of the last run (the part run now
    overwrites its own)."""
    earlier = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.update({key: value for key, value in earlier.items() if key in PARTS})


def run_parts_a_to_e(args: argparse.Namespace, results: dict, repo: Path, prepare: dict) -> None:
    arrays = load_mnist(repo / "data" / "prepared")
    print("a. tutorial model: reference fit vs vaepipe's loop", flush=True)
    results["a"] = part_a(args.epochs, arrays["train"], arrays["validation"])
    print("b. MLP-512 vs the matmul floor", flush=True)
    results["b"], mlp = part_b(args.epochs, arrays["train"], arrays["validation"])
    print("c. importance-sampled NLL, k=1000", flush=True)
    results["c"] = part_c(mlp, arrays["test"])
    del mlp
    tutorial = VaepipeTrainer({}, arrays["train"], arrays["validation"], epochs=1)
    tutorial.run_epoch()
    results["c_tutorial"] = part_c_tutorial(tutorial, arrays["test"])
    del tutorial
    print("d/e. the default pipeline, stage by stage", flush=True)
    results["d"] = part_d(repo, prepare)
    print(f"a. the train stage as whole processes ({args.stage_epochs} vs 1 epochs), "
          "alternated with the reference script", flush=True)
    summarize_a(results["a"], part_a_stage(repo, args.stage_epochs, args.stage_repeats))


def finish(results: dict, started: float) -> None:
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["total_bench_s"] = time.perf_counter() - started
    report = table(results)
    results["table"] = report
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{report}\n\nmachine: {results['machine']['cpu']}, {results['machine']['cores']} cores, load average "
          f"{results['machine']['load_average_at_start'][0]:.1f} at start, {results['machine']['load_average_at_end'][0]:.1f} "
          f"at end; bench took {results['total_bench_s']:.0f} s; raw timings in {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
