"""Stage train: fit the VAE on data/prepared, write models/vae.keras, train_log.csv and the MLflow run id."""

from vaepipe.config import load_params
from vaepipe.errors import run_stage


def main() -> None:
    params = load_params()  # validated before TensorFlow is even imported
    from vaepipe.training import train

    train(params)


if __name__ == "__main__":
    run_stage(main)
