"""Model registry (filled in by the models work)."""
