"""Gradio user interface: a thin layer over the caption core and the pipeline."""
