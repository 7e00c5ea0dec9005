"""The trainer step, supervised warm start and checkpoints."""
