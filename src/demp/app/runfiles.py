"""The names of the files in a run folder: one place for the training loop, the CLI, sweeps,
reports and the methods that read an earlier run (``scratch``); ``demp.app.rundir`` checks folders."""

CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"
MODEL_NAME = "model.pt"
CHECKPOINT_NAME = "checkpoint.pt"
ERROR_NAME = "error.txt"          # written by sweeps when a run fails
