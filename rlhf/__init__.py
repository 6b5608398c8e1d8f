"""rlhf: a reproducible, offline-capable preference-alignment pipeline driven by DVC (see README.md)."""
import logging
import os

# No machine this runs on is assumed to reach the network: never phone home.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
# bitsandbytes' CPU backend warns on import that an optional kernel package (`kernels`) is missing. k-bit layers run
# on a CPU without it (measured, see README: QLoRA), and it is not installable offline, so the warning is noise.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
