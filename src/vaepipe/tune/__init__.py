"""`make tune`: an Optuna search whose every trial is one DVC experiment (docs/search.md). The only code
that talks to Optuna.

- search: the search file (search.yaml): its schema, checked against the params schema before anything runs,
  and the mapping from a trial's values to the experiment's params overrides
- storage: where studies live (the journal file .optuna/journal.log by default, or an Optuna storage URL),
  `resolve_storage` and `load_study`
- pruning: what stages/train.py hands a trial's training: the Keras callback that reports each epoch's
  val_loss to the study and stops when the pruner says so, and the train_only metrics.json marker
  (training's own code imports nothing from tune/; Optuna is imported only for a trial)
- trials: one trial as `dvc exp run --temp ... train`, read back from the experiment DVC committed
- driver: the study's loop (ask, run, tell; `jobs` at once, Ctrl-C, several processes on one storage) and
  the final full runs of the chosen trials
- status: the study's trials as a table or JSON
- __main__: `python -m vaepipe.tune [status]` for the Makefile
"""
