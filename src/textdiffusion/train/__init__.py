"""Training: configuration, the trainer loop, optimiser and schedule, EMA, checkpoints."""
