"""Suite-wide settings: deterministic, CPU-sized runs on a 2-core machine."""
import os

# Spinning OpenMP threads starve each other (and the app/browser processes) on 2 cores: passive waits
# made small torch ops 30-130x faster under load. Must be set before torch starts its thread pool;
# subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

settings.register_profile("ci", deadline=None, max_examples=100, derandomize=True)
settings.register_profile("dev", deadline=None, max_examples=100)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
