"""Stage prepare: get the dataset named in params.yaml, verify it, split off validation images, write
data/prepared/{train,validation,test}.npz + meta.json. Does not import TensorFlow."""

from vaepipe import data, paths, prepared
from vaepipe.config import load_params
from vaepipe.process import run_stage


def main() -> None:
    params = load_params().data
    dataset = prepared.subset(data.load_dataset(params.dataset, params.source, paths.cache_dir()), params.limit)
    meta = prepared.write_splits(dataset, params)
    print(f"prepare: {params.dataset} from {dataset.source}: {meta['n_train']} train, "
          f"{meta['n_validation']} validation, {meta['n_test']} test images")


if __name__ == "__main__":
    run_stage(main)
