"""Optimizer and learning-rate schedule configs (`--optimizer.type`, `--scheduler.type`) and their builders."""
