"""Training: input pipeline, optimizer, train/eval steps, checkpoints."""
