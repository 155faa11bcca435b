"""Hyperparameter sweeps: our Hydra sweeper on current Optuna, pruning, and result figures."""
