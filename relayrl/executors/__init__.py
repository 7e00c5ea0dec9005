"""Executors: where generation runs, and how weights reach it."""
