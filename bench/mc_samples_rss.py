"""Peak RSS of evaluation.elbo_terms at evaluate.mc_samples = 10000 (docs/reliability.md).

    PYTHONPATH=src /usr/bin/time -v python bench/mc_samples_rss.py [prepared test.npz] [n images]

The tutorial model (untrained: memory does not depend on the weights), batch 500 as evaluate's default.
"""

import resource
import sys
import time

import numpy as np

from vaepipe import evaluation, paths
from vaepipe.config import ModelParams
from vaepipe.model import build_vae

test = np.load(sys.argv[1] if len(sys.argv) > 1 else paths.prepared_split("test"))
n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
x = (test["images"].reshape(len(test["images"]), -1).astype(np.float32) / 255.0)[:n]
vae = build_vae(ModelParams(), beta=0.5, binarize="none", seed=1)
start = time.time()
evaluation.elbo_terms(vae, x, mc_samples=10000, batch_size=500, seed=0)
print(f"{n} images, mc_samples 10000: {time.time() - start:.1f} s, "
      f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
