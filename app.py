"""Ideogram 4 Layout Studio: `python app.py [--model PATH_OR_ID] [--host] [--port] [--share] [--auth U:P]
[--memory MODE] [--mcp]`. Hugging Face Spaces import `demo` from here."""
from ideogram_app.ui.app import build_demo
from ideogram_app.ui.model_slot import ModelSlot
from ideogram_app.ui.serving import main

slot = ModelSlot()
demo = build_demo(slot)

if __name__ == "__main__":
    main(demo, slot)
