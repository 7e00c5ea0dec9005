"""relayrl: asynchronous RL post-training for language models, readable end to end."""

__version__ = "0.1.0"
