"""`make tune`: Optuna studies over params.yaml (the only package that talks to Optuna)."""
