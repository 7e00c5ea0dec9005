"""Held-out evaluation, pass@k, and run reports."""
