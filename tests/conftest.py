"""Suite-wide settings: deterministic, CPU-sized runs on a 2-core machine."""
import os

import torch
from hypothesis import settings

torch.set_num_threads(min(2, os.cpu_count() or 1))

settings.register_profile("ci", deadline=None, max_examples=100, derandomize=True)
settings.register_profile("dev", deadline=None, max_examples=100)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
