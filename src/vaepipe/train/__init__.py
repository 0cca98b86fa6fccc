"""Training, by topic: the input pipeline (`inputs`), learning-rate schedules, the callbacks around an
epoch, the one end-of-epoch path (`epoch_end`) and the checkpoint it writes, the run session both loops
share, the two loops (`single_process`: Keras `fit`; `distributed`: tf.distribute), the strategy and the
local launcher of multi_worker, and `provenance` (what a checkpoint's key hashes).

Nothing here is imported by this file: stages/train.py imports the loop it runs (and the launcher
without TensorFlow). Nothing here imports tune/, serving.py or tracking.model_logging: the stage hands the
loops a search trial's pruning callbacks and the model logging as arguments of `train()`, so the key that
names a checkpoint hashes training's code only (tests/test_train_session.py).
"""
