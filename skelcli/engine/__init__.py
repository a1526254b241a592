"""Training engine: the loop, checkpoints, distributed helpers."""
