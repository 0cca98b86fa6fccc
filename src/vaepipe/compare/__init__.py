"""`make compare`: the finished runs side by side, in reports/compare.{md,csv,html} and figures.

- rows: the runs read back through vaepipe.tracking (the only MLflow user), grouped by test protocol
  (validation protocol for train-only runs), the params that differ between them (blank where a run's
  architecture does not read one), one row per run
- table: the rows as cells of text, column by column from one list, and as markdown: one ranked table
  per test protocol (never one ranking across protocols) and, apart, the train-only ones (a study's trials)
- figures: validation-loss curves, the rate-distortion plane, metrics against each numeric param, as PNG;
  legends name runs briefly, and of many curves only the best few stand out
- study: `--study NAME`: the study's trials table and Optuna's figures (through vaepipe.tune)
- html: the one self-contained page (inline CSS, figures inlined, every run linked to the MLflow UI's
  training view, with a line naming the UI the links need)
- __main__: `python -m vaepipe.compare` (the Makefile's compare): select the runs, write the reports
"""
