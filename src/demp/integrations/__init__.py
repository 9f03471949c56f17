"""Glue between DemonPruner and the places models train: DDP, torch.compile, Lightning."""
