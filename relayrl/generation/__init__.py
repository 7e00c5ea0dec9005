"""Sampling from the policy: KV-cached, batched, with the behaviour log-probabilities."""
