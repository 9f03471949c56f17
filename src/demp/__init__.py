"""demp: Demon Pruning (DemP) for PyTorch."""
__version__ = "0.1.0"
