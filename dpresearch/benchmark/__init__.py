"""``python -m dpresearch.benchmark``: DP engines against non-private training, measured."""
