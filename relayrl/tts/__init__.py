"""Test-time scaling: spend more samples (and judge calls) at inference for a better answer."""
