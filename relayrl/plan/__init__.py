"""The step-time model behind `relayrl plan`: phases (phases.py) on devices (devices.py, calibrate.py), followed
through many steps (pipeline.py), over every placement of a number of devices (search.py)."""
