"""Imported at start-up by every Python process started from a relayrl process that hides torch extensions built
for another torch (relayrl/compat.py puts this folder first on PYTHONPATH): vLLM's helper processes, Ray workers."""

import os
import sys

for _name in filter(None, os.environ.get("RELAYRL_HIDDEN_MODULES", "").split(",")):
    sys.modules.setdefault(_name, None)
