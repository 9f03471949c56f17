"""Structured pruning baselines (spec section 7); registered as training methods."""
