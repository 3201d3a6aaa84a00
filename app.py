"""Ideogram 4 Layout Studio: `python app.py [--model PATH_OR_ID] [--host] [--port] [--share] [--auth U:P]
[--admin USER] [--models-dir DIR] [--allow-hub] [--memory MODE] [--max-side PX] [--mcp]` (`--help` lists all). Hugging Face
Spaces run this file; imported, it reads its options from the environment only."""
import sys

from ideogram_app.ui.app import build_demo
from ideogram_app.ui.model_slot import ModelSlot
from ideogram_app.ui.policy import Policy
from ideogram_app.ui.serving import parse_options, serve

options = parse_options(sys.argv[1:] if __name__ == "__main__" else [])
policy = Policy.from_options(options)
slot = ModelSlot()
demo = build_demo(slot, limits=options.limits, policy=policy)

if __name__ == "__main__":
    serve(demo, slot, options, policy)
