"""`make compare`: the finished runs side by side, in reports/compare.{md,csv,html} and figures.

- rows: the runs read back through vaepipe.tracking (the only MLflow user), the params that differ
  between them, one row per run
- table: the rows as cells of text, column by column from one list, and as markdown
- figures: validation-loss curves, the rate-distortion plane, metrics against each numeric param, as PNG
- html: the one self-contained page (inline CSS, figures inlined, every run linked to the MLflow UI)
- __main__: `python -m vaepipe.compare` (the Makefile's compare): select the runs, write the reports
"""
