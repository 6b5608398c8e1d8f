"""rlhf: a reproducible, offline-capable preference-alignment pipeline driven by DVC (see README.md)."""
import os

# No machine this runs on is assumed to reach the network: never phone home.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
