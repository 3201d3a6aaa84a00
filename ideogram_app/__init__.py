"""Ideogram 4 Layout Studio: caption core, model stack, pipeline and Gradio app."""
