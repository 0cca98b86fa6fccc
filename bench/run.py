"""`make bench`: vaepipe's speed against the tutorial's code and against this machine's arithmetic limit.

One run, variants alternated epoch by epoch so machine drift (other jobs, thermal, turbo) cancels;
every statistic is a median over epochs 2..N (epoch 1 pays tracing and XLA compilation).

  a. tutorial model, batch 32: bench/reference_tutorial.py's plain `fit` vs vaepipe's train path
  b. MLP 784-512-2-512-784, batch 128: vaepipe's epoch (training + validation pass) vs its FLOPs /
     the measured float32 matmul rate (NumPy sgemm)
  c. importance-sampled NLL, k=1000, full test set, with the MLP model of (b)
  d. `dvc repro` of the default params in a temporary clone, per stage, then a no-op `dvc repro`
  e. peak resident memory of the train stage (from d)

Writes bench/results.json and prints a markdown table. Usage: python bench/run.py [--epochs N] [--skip-dvc]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "work"  # scratch, git-ignored
RESULTS = ROOT / "bench" / "results.json"
VENV_BIN = ROOT / ".venv" / "bin"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

TARGETS = {  # name: (comparison, threshold), as issue 5 states them
    "a_speedup_vs_reference": (">=", 6.0),
    "b_ratio_to_floor": ("<=", 2.0),
    "c_iw_nll_seconds": ("<", 180.0),
    "d_noop_repro_seconds": ("<", 3.0),
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


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """Train and test images as float32 in [0, 1], from data/prepared (run `dvc repro prepare` first)."""
    from vaepipe import prepared

    arrays = [prepared.load_verified(split) for split in ("train", "test")]
    return tuple(prepared.to_unit_interval(split.images) for split in arrays)  # type: ignore[return-value]


class VaepipeTrainer:
    """vaepipe's own training path (compile_vae + make_datasets + fit, validation included), one epoch per call."""

    def __init__(self, overrides: dict, x_train: np.ndarray, x_test: np.ndarray) -> None:
        import tensorflow as tf
        from reference_tutorial import EpochClock

        from vaepipe.batches import make_datasets
        from vaepipe.callbacks import EpochRandomState
        from vaepipe.config import parse_params
        from vaepipe.training import compile_vae

        self.params = parse_params(overrides)
        train = self.params.train
        steps_per_epoch = -(-len(x_train) // train.batch_size)
        # As training.train(): the epoch order is a function of (seed, epoch), and the dataset stacks
        # the batches of one compiled call where compile_vae says so (vae.stack_steps).
        self.vae = compile_vae(self.params, steps_per_execution=min(train.steps_per_execution, steps_per_epoch),
                               steps_per_epoch=steps_per_epoch)
        epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.train_ds, self.test_ds = make_datasets(x_train, x_test, train.batch_size, train.seed,
                                                    self.params.evaluate.batch_size, epoch=epoch,
                                                    steps_per_execution=self.vae.stack_steps)
        self.random_state = EpochRandomState(train.seed, epoch)
        self.clock = EpochClock()
        self.epoch = 0

    def run_epoch(self) -> float:
        self.vae.fit(self.train_ds, validation_data=self.test_ds, epochs=self.epoch + 1, initial_epoch=self.epoch,
                     callbacks=[self.random_state, self.clock], shuffle=False, verbose=0)
        self.epoch += 1
        return self.clock.seconds[-1]


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


def part_a(epochs: int, x_train: np.ndarray, x_test: np.ndarray) -> dict:
    reference = ReferenceTrainer(x_train)
    vaepipe = VaepipeTrainer({}, x_train, x_test)  # params.yaml defaults: the tutorial's model, batch 32
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
            "vaepipe_steps_per_epoch": -(-len(x_train) // 32)}


MLP_PARAMS = {"model": {"arch": "mlp", "hidden": [512], "latent_dim": 2},
              "train": {"batch_size": 128, "beta": 1.0}}


def part_b(epochs: int, x_train: np.ndarray, x_test: np.ndarray) -> tuple[dict, VaepipeTrainer]:
    trainer = VaepipeTrainer(MLP_PARAMS, x_train, x_test)
    flops = mlp_train_flops_per_example()
    # The timed epoch is what the train stage runs: the training steps and the validation pass
    # (one forward per test image), so the floor counts the arithmetic of both.
    validation_gflop = flops["forward"] * len(x_test) / 1e9
    epoch_gflop = flops["three_x_forward"] * len(x_train) / 1e9 + validation_gflop
    strict_gflop = flops["strict"] * len(x_train) / 1e9 + validation_gflop
    times, rates = [], []
    for epoch in range(epochs):
        rates.append(matmul_gflops())  # alternate with the epochs: both see the same machine state
        times.append(trainer.run_epoch())
        print(f"  b epoch {epoch + 1}: vaepipe {times[-1]:.2f} s, matmul {rates[-1]:.0f} GFLOP/s", flush=True)
    rate = statistics.median(rates)
    floor = epoch_gflop / rate
    vp = steady(times)
    return {"seconds_per_epoch": times, "matmul_gflops": rates, "median_matmul_gflops": rate,
            "epoch_gflop": epoch_gflop, "validation_gflop": validation_gflop,
            "epoch_gflop_strict": strict_gflop,
            "floor_s": floor, "median_vaepipe_s": vp, "ratio_to_floor": vp / floor,
            "ratio_to_floor_strict": vp / (strict_gflop / rate),
            "ratio_to_train_only_floor": vp / ((epoch_gflop - validation_gflop) / rate),
            "achieved_gflops": epoch_gflop / vp}, trainer


def part_c(trainer: VaepipeTrainer, x_test: np.ndarray, k: int = 1000) -> dict:
    from vaepipe.evaluation import iw_log_likelihood

    rate_before = matmul_gflops()
    start = time.perf_counter()
    log_px = iw_log_likelihood(trainer.vae, x_test, k=k, seed=0)
    seconds = time.perf_counter() - start
    # Decoder matmul flops alone: (2*512 + 512*784) multiply-adds per sample, 2 flops each.
    gflop = 2 * (2 * 512 + 512 * 784) * k * len(x_test) / 1e9
    return {"seconds": seconds, "k": k, "n_test": len(x_test), "test_nll_iw": float(-np.mean(log_px)),
            "decoder_gflop": gflop, "achieved_gflops": gflop / seconds, "matmul_gflops_before": rate_before,
            "floor_s": gflop / rate_before}


# ---------------------------------------------------------------- dvc pipeline in a temporary clone


def stage_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "DVC_")) and k not in ("PYTHONPATH", "VAEPIPE_EXPERIMENT")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VAEPIPE_QUIET"] = "1"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


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


def timed_process(command: list[str], cwd: Path) -> dict:
    """Run a command; wall seconds and the peak RSS of the largest process in its tree."""
    rss_file = WORK / "peak_rss_kib"
    start = time.perf_counter()
    with open(WORK / "dvc.log", "ab") as log:
        process = subprocess.run([sys.executable, "-c", _RSS_WRAPPER, str(rss_file), *command], cwd=cwd,
                                 env=stage_env(), stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}); see {WORK / 'dvc.log'}")
    return {"seconds": seconds, "peak_rss_gb": int(rss_file.read_text()) * 1024 / 1e9}  # Linux: KiB


def clone_working_tree(dest: Path) -> None:
    """git clone, then overlay the working tree's uncommitted source files so the bench measures them."""
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard",
                             "--", "src", "stages", "dvc.yaml", "params.yaml"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)


def part_d(noop_repeats: int = 3) -> dict:
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "dvc.log").write_bytes(b"")
    with tempfile.TemporaryDirectory(prefix="vaepipe-bench-", dir=WORK) as tmp:
        repo = Path(tmp) / "repo"
        clone_working_tree(repo)
        stages = {}
        for stage in ("prepare", "train", "evaluate", "plot"):  # one stage per process: wall time each
            stages[stage] = timed_process(["dvc", "repro", "-s", stage], repo)
            print(f"  d dvc repro -s {stage}: {stages[stage]['seconds']:.1f} s", flush=True)
        noop = [timed_process(["dvc", "repro"], repo)["seconds"] for _ in range(noop_repeats)]
        print(f"  d no-op dvc repro: {', '.join(f'{s:.2f}' for s in noop)} s", flush=True)
    return {"stages": stages, "total_s": sum(s["seconds"] for s in stages.values()),
            "noop_s": noop, "median_noop_s": statistics.median(noop),
            # The process tree of `dvc repro -s train`: dvc itself and `python stages/train.py`.
            "train_peak_rss_gb": stages["train"]["peak_rss_gb"]}


# ---------------------------------------------------------------- report


def verdict(name: str, value: float) -> str:
    op, limit = TARGETS[name]
    ok = {">=": value >= limit, "<=": value <= limit, "<": value < limit}[op]
    return f"{'PASS' if ok else 'FAIL'} ({op} {limit:g})"


def table(results: dict) -> str:
    a, b, c, d = (results.get(key) for key in ("a", "b", "c", "d"))
    rows = ["| measurement | median | target |", "|---|---|---|"]
    if a:
        rows += [f"| a. reference tutorial `fit`, batch 32 | {a['median_reference_s']:.2f} s/epoch | |",
                 f"| a. vaepipe train, tutorial model, batch 32 | {a['median_vaepipe_s']:.2f} s/epoch | |",
                 f"| a. speedup (reference / vaepipe) | {a['speedup_ratio_of_medians']:.2f}x "
                 f"(paired {a['speedup_median_of_paired']:.2f}x) | "
                 f"{verdict('a_speedup_vs_reference', a['speedup_ratio_of_medians'])} |"]
    if b:
        rows += [f"| b. NumPy float32 matmul rate | {b['median_matmul_gflops']:.0f} GFLOP/s | |",
                 f"| b. MLP-512 floor ({b['epoch_gflop']:.0f} GFLOP/epoch, validation included) | "
                 f"{b['floor_s']:.2f} s/epoch | |",
                 f"| b. vaepipe MLP-512, batch 128 | {b['median_vaepipe_s']:.2f} s/epoch "
                 f"({b['achieved_gflops']:.0f} GFLOP/s) | |",
                 f"| b. vaepipe / floor | {b['ratio_to_floor']:.2f}x (strict count {b['ratio_to_floor_strict']:.2f}x) | "
                 f"{verdict('b_ratio_to_floor', b['ratio_to_floor'])} |"]
    if c:
        rows += [f"| c. IW NLL k={c['k']}, {c['n_test']} test images, MLP-512 | {c['seconds']:.1f} s "
                 f"(floor {c['floor_s']:.0f} s) | {verdict('c_iw_nll_seconds', c['seconds'])} |"]
    if d:
        for stage, info in d["stages"].items():
            rows.append(f"| d. `dvc repro -s {stage}` | {info['seconds']:.1f} s | |")
        rows += [f"| d. whole `dvc repro` (sum of stages) | {d['total_s']:.1f} s | |",
                 f"| d. no-op `dvc repro` | {d['median_noop_s']:.2f} s | "
                 f"{verdict('d_noop_repro_seconds', d['median_noop_s'])} |",
                 f"| e. train stage peak RSS | {d['train_peak_rss_gb']:.2f} GB | "
                 f"{verdict('e_train_peak_rss_gb', d['train_peak_rss_gb'])} |"]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="epochs per variant (>= 4; epoch 1 is dropped)")
    parser.add_argument("--skip-dvc", action="store_true", help="skip d and e (the dvc pipeline run)")
    args = parser.parse_args()
    if args.epochs < 4:
        parser.error("--epochs must be at least 4")
    started = time.perf_counter()
    results: dict = {"machine": machine_info(), "epochs": args.epochs}
    x_train, x_test = load_mnist()
    print("a. tutorial model: reference fit vs vaepipe", flush=True)
    results["a"] = part_a(args.epochs, x_train, x_test)
    print("b. MLP-512 vs the matmul floor", flush=True)
    results["b"], mlp = part_b(args.epochs, x_train, x_test)
    print("c. importance-sampled NLL, k=1000", flush=True)
    results["c"] = part_c(mlp, x_test)
    del mlp
    if not args.skip_dvc:
        print("d/e. dvc repro in a temporary clone", flush=True)
        results["d"] = part_d()
    results["total_bench_s"] = time.perf_counter() - started
    report = table(results)
    results["table"] = report
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{report}\n\nmachine: {results['machine']['cpu']}, {results['machine']['cores']} cores; "
          f"bench took {results['total_bench_s']:.0f} s; raw timings in {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
