"""Stage plot: draw the figures of the trained model into plots/*.png and log them to the MLflow run."""

from vaepipe.config import load_params
from vaepipe.process import run_stage


def main() -> None:
    params = load_params()
    from vaepipe import paths, tracking

    run_id = tracking.read_run_id(paths.RUN_ID_FILE)
    tracking.check_can_log()  # a wrong login or a READ-only user stops here, before TensorFlow loads
    from vaepipe import prepared

    data = prepared.figure_data(params.data.binarize)  # a missing or damaged split: here, before TensorFlow
    from vaepipe import plotting

    inputs = plotting.load_inputs(data)  # a bad model or log stops here, before the run is touched
    with tracking.active_run(run_id):
        for png in plotting.draw_all(*inputs):
            tracking.log_artifact(png, artifact_path="plots")
            print(f"plot: wrote {png.relative_to(paths.ROOT)}")


if __name__ == "__main__":
    run_stage(main, draws_figures=True)
