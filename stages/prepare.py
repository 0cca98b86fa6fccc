"""Stage prepare: get the dataset named in params.yaml, verify it, write data/prepared/*.npz + meta.json.

Does not import TensorFlow.
"""

import json

from vaepipe import data, paths, prepared
from vaepipe.config import load_params
from vaepipe.errors import run_stage


def main() -> None:
    params = load_params().data
    dataset = prepared.subset(data.load_dataset(params.dataset, params.source, paths.cache_dir()), params.limit)
    paths.PREPARED_DIR.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", dataset.train), ("test", dataset.test)):
        with paths.atomic_path(paths.prepared_split(name)) as tmp:
            prepared.save_split(split, tmp)
    meta = {
        "dataset": params.dataset,
        "source": dataset.source,
        "n_train": len(dataset.train.labels),
        "n_test": len(dataset.test.labels),
        "sha256": {"train": prepared.arrays_sha256(dataset.train), "test": prepared.arrays_sha256(dataset.test)},
    }
    with paths.atomic_path(paths.PREPARED_META) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"prepare: {params.dataset} from {dataset.source}: {meta['n_train']} train, {meta['n_test']} test images")


if __name__ == "__main__":
    run_stage(main)
