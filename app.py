"""Ideogram 4 Layout Studio: Gradio entry point (`python app.py`); Spaces import `demo` from here."""
import gradio as gr

with gr.Blocks(title="Ideogram 4 Layout Studio") as demo:
    gr.Markdown("# Ideogram 4 Layout Studio\nThe layout editor is under construction.")

if __name__ == "__main__":
    demo.launch()
