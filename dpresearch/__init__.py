"""dpresearch: a research harness for differentially private deep learning."""

__version__ = "0.1.0"
