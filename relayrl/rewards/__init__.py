"""Reward scorers: they fill in Rollout.reward and never crash the run."""
