"""Ideogram 4 Layout Studio: `python app.py [--model PATH_OR_ID] [--host] [--port] [--share] [--auth U:P]
[--admin USER] [--models-dir DIR] [--allow-hub] [--memory MODE] [--mode SPEED] [--max-side PX] [--mcp]` (`--help`
lists all). Hugging Face Spaces run this file; imported, it reads its options from the environment only.

Two environment defaults are set here, before anything imports torch or huggingface_hub, because both read
them once, when they load (docs/app.md, "CPU threads" and "Hugging Face Spaces"):
- `OMP_WAIT_POLICY=PASSIVE`: OpenMP threads that spin while waiting for work starve the server's other
  threads (and each other on small machines); passive waits made CPU generation 2-10 times faster.
- `IDEOGRAM_DATA_DIR` (a mounted storage bucket on a Space): results, LoRAs, training runs, downloaded weights
  and compiled kernels all go under it. Unset: `./outputs` and the usual caches, as before.
A value already in the environment always wins.
"""
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if os.environ.get("IDEOGRAM_DATA_DIR"):
    _data = os.path.abspath(os.path.expanduser(os.environ["IDEOGRAM_DATA_DIR"]))
    for _name, _folder in (("IDEOGRAM_OUTPUT_DIR", "outputs"), ("HF_HOME", "huggingface"),
                           ("TORCHINDUCTOR_CACHE_DIR", "torch-compile")):
        os.environ.setdefault(_name, os.path.join(_data, _folder))

from ideogram_app.ui.app import build_demo  # noqa: E402  (after the environment defaults above)
from ideogram_app.ui.model_slot import ModelSlot  # noqa: E402
from ideogram_app.ui.policy import Policy  # noqa: E402
from ideogram_app.ui.serving import parse_options, serve  # noqa: E402

options = parse_options(sys.argv[1:] if __name__ == "__main__" else [])
policy = Policy.from_options(options)
slot = ModelSlot()
demo = build_demo(slot, limits=options.limits, policy=policy)

if __name__ == "__main__":
    serve(demo, slot, options, policy)
