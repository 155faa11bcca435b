"""Comparison reports: accuracy vs epsilon, cost per method, learning curves, sweep heatmaps;
offline (HTML from the runs' own records) and on wandb (a Report built in code)."""
