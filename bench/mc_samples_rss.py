"""Peak RSS of evaluation.elbo_terms at evaluate.mc_samples = 10000 (docs/reliability.md).

    PYTHONPATH=src /usr/bin/time -v python bench/mc_samples_rss.py [n images]

The tutorial model (untrained: memory does not depend on the weights), batch 500 as evaluate's default.
It reads the prepared validation split, not the test split: a benchmark has no business with test images,
and memory depends only on the shapes.
"""

import resource
import sys
import time

from vaepipe import evaluation, prepared
from vaepipe.config import ModelParams, TrainParams
from vaepipe.model import build_vae

n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
x = prepared.model_inputs(prepared.load_verified("validation"), "none", training=False)[:n]
vae = build_vae(ModelParams(), TrainParams(beta=0.5, seed=1), binarize="none")
start = time.time()
evaluation.elbo_terms(vae, x, mc_samples=10000, batch_size=500, seed=0)
print(f"{n} images, mc_samples 10000: {time.time() - start:.1f} s, "
      f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
