"""relayrl: asynchronous RL post-training for language models, readable end to end."""

from relayrl.compat import hide_mismatched

hide_mismatched()  # before anything imports transformers (relayrl/compat.py)

__version__ = "0.1.0"
