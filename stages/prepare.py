"""Stage prepare: get the dataset named in params.yaml, verify it, split off validation images, write
data/prepared/{train,validation,test}.npz + meta.json. Does not import TensorFlow."""

import json

from vaepipe import data, paths, prepared
from vaepipe.config import load_params
from vaepipe.errors import run_stage


def main() -> None:
    params = load_params().data
    dataset = prepared.subset(data.load_dataset(params.dataset, params.source, paths.cache_dir()), params.limit)
    train, validation = prepared.split_off_validation(dataset.train, params.val_size, params.split_seed)
    splits = {"train": train, "validation": validation, "test": dataset.test}
    paths.PREPARED_DIR.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        if split is None:  # data.val_size = 0: no validation split, and no stale one left behind
            paths.prepared_split(name).unlink(missing_ok=True)
            continue
        with paths.atomic_path(paths.prepared_split(name)) as tmp:
            prepared.save_split(split, tmp)
    meta = {
        "dataset": params.dataset,
        "source": dataset.source,
        **{f"n_{name}": 0 if split is None else len(split.labels) for name, split in splits.items()},
        "validation": {"val_size": params.val_size, "split_seed": params.split_seed,
                       "chosen": "first val_size of numpy default_rng(split_seed).permutation(training images)"},
        "sha256": {name: prepared.arrays_sha256(split) for name, split in splits.items() if split is not None},
    }
    with paths.atomic_path(paths.PREPARED_META) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"prepare: {params.dataset} from {dataset.source}: {meta['n_train']} train, "
          f"{meta['n_validation']} validation, {meta['n_test']} test images")


if __name__ == "__main__":
    run_stage(main)
