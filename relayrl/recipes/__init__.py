"""Recipes: the phases a run goes through before RL, beyond the supervised warm start (`recipe=...`)."""
