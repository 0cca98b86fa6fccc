"""Long work says where it is (vaepipe.progress): the time-left estimate and the >5 min warning as pure
functions and through real evaluation parts with an injected clock; plain lines off a terminal; the
training bar's count in batches (not stacks) checked against the real input pipeline; Fashion-MNIST
class names in the latent figure."""

import json
import time

import numpy as np
import pytest

from vaepipe import evaluation, paths, plots, plotting, progress
from vaepipe.config import ModelParams, TrainParams, parse_params
from vaepipe.data import CLASS_NAMES
from vaepipe.model import build_vae
from vaepipe.train.inputs import batches_in_elements, make_datasets


class FakeClock:
    """A clock the test moves by hand (seconds)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_estimate_is_the_measured_rate_times_what_is_left():
    assert progress.seconds_left(2.0, 20, 1000) == pytest.approx(98.0)  # 0.1 s per image, 980 left
    assert progress.seconds_left(5.0, 100, 100) == 0.0
    assert progress.seconds_left(1.0, 0, 100) == 0.0  # nothing measured yet


@pytest.mark.parametrize("estimate, warned", [(299.0, False), (300.0, False), (301.0, True), (23 * 60, True)])
def test_a_part_estimated_over_five_minutes_says_so_and_names_the_param(estimate, warned):
    line = progress.long_part_warning("IW NLL", estimate, "evaluate.iw_samples=1000 importance samples per image",
                                      "evaluate.iw_samples")
    if not warned:
        assert line is None
        return
    assert line.startswith("evaluate: the IW NLL will take about ")
    assert "(evaluate.iw_samples=1000 importance samples per image)" in line
    assert line.endswith("a smaller evaluate.iw_samples shortens it")
    if estimate == 23 * 60:
        assert "about 23 min" in line


def test_measured_numbers_warn_for_the_conv_model_and_not_for_the_tutorials():
    """Measured here (docs/reliability.md): a batch of 20 test images after the first at iw_samples 1000
    took 9.9 s with the conv model, 0.18 s with the tutorial's (whose first took 2.5 s: tracing)."""
    def estimate(first: float, second: float) -> float:
        return first + second + progress.seconds_left(second, 20, 10000 - 20)

    why = "evaluate.iw_samples=1000 importance samples per image"
    line = progress.long_part_warning("IW NLL", estimate(36.4, 9.9), why, "evaluate.iw_samples")
    assert line is not None and "about 83 min" in line
    assert progress.long_part_warning("IW NLL", estimate(2.5, 0.18), why, "evaluate.iw_samples") is None


def test_off_a_terminal_a_part_prints_a_plain_line_per_tenth_with_elapsed_and_time_left():
    clock, lines = FakeClock(), []
    part = progress.PartProgress("IW NLL", 1000, "image", "why", "evaluate.iw_samples", terminal=False,
                                 clock=clock, write=lines.append)
    for _ in range(50):  # 50 calls of 20 images, 1 s each
        clock.now += 1.0
        part.advance(20)
    assert len(lines) == 10, lines
    assert [line.split("(")[1].split("%")[0] for line in lines] == [str(p) for p in range(10, 101, 10)]
    assert lines[0] == "evaluate: IW NLL 100/1000 images (10%), 5s elapsed, about 45s left"
    assert lines[-1] == "evaluate: IW NLL 1000/1000 images (100%) in 50s"
    assert not any("\r" in line or "\x1b" in line for line in lines)


def test_the_warning_comes_once_after_the_second_call_and_ignores_the_first_calls_compile():
    clock, lines = FakeClock(), []
    part = progress.PartProgress("ELBO terms", 10000, "image", "evaluate.mc_samples=10 z draws per image",
                                 "evaluate.mc_samples", terminal=False, clock=clock, write=lines.append)
    clock.now = 30.0  # the first call traces and compiles: 30 s, which x 500 calls would be hours
    part.advance(20)
    clock.now += 0.1  # the second: 0.1 s per 20 images, about 50 s for the rest
    part.advance(20)
    assert not any("will take" in line for line in lines), lines

    clock, lines = FakeClock(), []
    part = progress.PartProgress("ELBO terms", 10000, "image", "evaluate.mc_samples=10 z draws per image",
                                 "evaluate.mc_samples", terminal=False, clock=clock, write=lines.append)
    for _ in range(10):
        clock.now += 1.0  # 1 s per 20 images: about 8 min in all
        part.advance(20)
    warnings = [line for line in lines if "will take" in line]
    assert warnings == ["evaluate: the ELBO terms will take about 8 min (evaluate.mc_samples=10 z draws per image); "
                        "a smaller evaluate.mc_samples shortens it"]
    assert lines.index(warnings[0]) == 0, "said before the part's progress goes on"


def test_every_evaluation_part_warns_naming_its_own_param_with_a_slow_clock(capsys):
    """score() on a real (untrained) model and real arrays; the injected clock runs 10^8 times faster than
    the real one, so each part's estimate, measured on its real calls, exceeds 5 minutes (the kNN probe's
    two calls take about a millisecond: at 10^5 a quick one stayed under 5 minutes, in one CI run)."""
    rng = np.random.default_rng(0)
    x_test = rng.random((1200, 784), dtype=np.float32)
    x_train = rng.random((60, 784), dtype=np.float32)
    inputs = evaluation.EvaluationInputs(build_vae(ModelParams(), TrainParams(beta=0.5, seed=1), binarize="none"), x_test,
                                         rng.integers(0, 10, 1200), x_train, rng.integers(0, 10, 60))
    params = parse_params({"evaluate": {"mc_samples": 2, "iw_samples": 3}})

    metrics = evaluation.score(inputs, params, clock=lambda: 1e8 * time.perf_counter())

    lines = capsys.readouterr().out.splitlines()
    warnings = [line for line in lines if "will take about" in line]
    assert len(warnings) == 3, lines
    elbo, iw, knn = warnings
    assert "(evaluate.mc_samples=2 z draws per image)" in elbo and elbo.endswith("evaluate.mc_samples shortens it")
    assert "the IW NLL" in iw and "(evaluate.iw_samples=3 importance samples per image)" in iw
    assert iw.endswith("a smaller evaluate.iw_samples shortens it")
    assert "(1200 test x 60 training images)" in knn and knn.endswith("a smaller data.limit shortens it")
    for warning, part in zip(warnings, ("ELBO terms", "IW NLL", "kNN probe"), strict=True):
        assert lines.index(warning) < lines.index(next(line for line in lines if f"{part} 1200/1200" in line))
    assert np.isfinite(metrics["test_nll_iw"])


def test_off_a_terminal_training_prints_one_line_per_epoch_counted_in_batches():
    clock, lines = FakeClock(), []
    epochs = progress.EpochProgress(4, 1563, terminal=False, clock=clock, write=lines.append)
    for epoch, seconds in enumerate((10.0, 1.5, 2.5, 2.0)):  # the first epoch compiles: 10 s
        epochs.begin(epoch)
        for done in (71, 142, 1563):
            clock.now += seconds / 3
            epochs.update(done)
        epochs.end(epoch, {"loss": 160.0, "val_loss": 161.5, "epoch_time": seconds})
    assert lines[0] == ("epoch 1/4: 1563/1563 batches in 10s (6ms/batch), time left estimated after the next epoch "
                        "(this one included compiling); loss=160.0000 val_loss=161.5000")
    # The estimate leaves out the first epoch's compile time: 1.5 s per epoch after it, 2 epochs left.
    assert "about 3s left" in lines[1]
    assert "about 2s left" in lines[2]  # (1.5 + 2.5) / 2 for the one left
    assert len(lines) == 4 and lines[3].startswith("epoch 4/4: 1563/1563 batches in 2s") and ", done;" in lines[3]


def test_on_a_terminal_training_draws_keras_bar_in_batches(capsys):
    epochs = progress.EpochProgress(1, 57, terminal=True)
    epochs.begin(0)
    epochs.update(56)
    epochs.end(0, {"loss": 1.0})
    out = capsys.readouterr().out
    assert out.startswith("Epoch 1/1\n")
    assert "\r" in out and "56/57" in out and "57/57" in out and ("ms/batch" in out or "us/batch" in out)
    assert out.count("57/57") == 1, "the bar is finalized once, with the epoch's metrics"


@pytest.mark.parametrize("n, batch_size, steps", [(1000, 32, 100), (50000, 32, 100), (1800, 32, 100), (96, 32, 100),
                                                  (1000, 32, 1), (1000, 32, 7), (20, 32, 100)])
def test_the_batch_count_of_each_element_matches_the_input_pipeline(n, batch_size, steps):
    """What Keras counts (elements: stacks of batches, or batches) converted to batches, against the real
    datasets fit is given: at the defaults (50000 images, batch 32) 23 stacks are 1563 batches."""
    x = np.zeros((n, 2), np.float32)
    batches = make_datasets(x, None, batch_size, seed=0, epochs=range(1), batches_per_stack=steps)
    sizes = [int(element.shape[0]) if steps > 1 else 1 for element in batches.train]
    assert len(sizes) == batches.stacks_per_epoch
    for elements in range(len(sizes) + 1):
        assert batches_in_elements(elements, n, batch_size, steps) == sum(sizes[:elements])
    if (n, steps) == (50000, 100):
        assert (len(sizes), sum(sizes)) == (23, 1563)


def test_fashion_mnist_figures_name_the_classes(tmp_path, monkeypatch):
    """The plot stage reads the dataset from meta.json; the latent figure's colour bar names each class."""
    monkeypatch.setattr(paths, "PREPARED_META", tmp_path / "meta.json")
    (tmp_path / "meta.json").write_text(json.dumps({"dataset": "fashion_mnist"}))
    names = plotting.dataset_class_names()
    assert names == ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                     "Ankle boot")
    rng = np.random.default_rng(0)
    figure = plots.latent_scatter(rng.normal(size=(50, 2)), np.arange(50) % 10, "validation", names)
    texts = [text.get_text() for ax in figure.axes for text in ax.get_yticklabels()]
    assert [name for name in names if name in texts] == list(names)
    plots.plt.close(figure)

    (tmp_path / "meta.json").write_text(json.dumps({"dataset": "mnist"}))
    assert plotting.dataset_class_names() == CLASS_NAMES["mnist"] == tuple("0123456789")
