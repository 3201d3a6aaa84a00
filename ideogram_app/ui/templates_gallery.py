"""The template gallery: a thumbnail of each shipped template's layout, drawn at the template's own
aspect ratio; picking one loads its caption *and* its size, and asks first when that would replace
work the user has not kept anywhere else.

Why the size comes along: boxes are fractions of the width and the height, so a template shown at
another aspect ratio is a different layout (the phone-screen app mock squashed into a square). The
template's size is `caption/templates.py`'s `TEMPLATE_FORMATS`.

Why the question is asked on the server, in the page (a "Replace / Keep mine" bar) and not with the
browser's `confirm()`: only the server's session state knows whether the caption is unsaved work,
the bar works the same for keyboard and touch users, and it cannot be suppressed by the browser.
Loading stays undoable either way (Undo brings the previous caption back).

Thumbnails are rendered once per process (`caption/render.py`, Pillow only) and handed to Gradio,
which stores them in its cache when the app is built; no page load renders anything.
"""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Callable

import gradio as gr
from PIL import Image

from ideogram_app.caption.render import render_layout
from ideogram_app.caption.templates import list_templates, load_template, template_format
from ideogram_app.limits import Limits
from ideogram_app.pipeline.sizes import ASPECT_PRESETS, MULTIPLE

from .editor import load_caption
from .markup import escape
from .state import EditorState, empty_caption
from .wiring import GLUE, Components, emits

if TYPE_CHECKING:
    from .tabs.compose import ComposeTab

THUMBNAIL_SIDE = 256  # longest side of a thumbnail, in pixels
OWN_OUTPUTS = ("template_pending", "template_confirm", "template_gallery", "template_sidebar")


@lru_cache(maxsize=None)
def thumbnail(name: str) -> Image.Image:
    """The layout preview of template `name` at its aspect ratio, longest side THUMBNAIL_SIDE."""
    fmt = template_format(name)
    scale = THUMBNAIL_SIDE / max(fmt.width, fmt.height)
    return render_layout(load_template(name), round(fmt.width * scale), round(fmt.height * scale))


def fitted_size(width: int, height: int, limits: Limits) -> tuple[int, int]:
    """(width, height), or the same aspect scaled down to the largest multiples of 16 the server's
    limits allow (an operator's --max-side below a template's side)."""
    scale = min(1.0, limits.max_side / max(width, height), (limits.max_pixels / (width * height)) ** 0.5)
    if scale == 1.0:
        return width, height
    return tuple(max(limits.min_side, int(side * scale) // MULTIPLE * MULTIPLE) for side in (width, height))


def gallery_items() -> list[tuple[Image.Image, str]]:
    """(thumbnail, caption) for every template, in list_templates() order (the gallery's index)."""
    items = []
    for name in list_templates():
        fmt = template_format(name)
        items.append((thumbnail(name), f"{fmt.title} · {fmt.aspect}"))
    return items


def has_unsaved_work(state: EditorState) -> bool:
    """Whether replacing the caption would throw away something the user made: anything but the empty
    start and a template exactly as shipped (those can be had again with one click)."""
    if state.plain_text is not None:
        return bool(state.plain_text.strip())
    if state.caption == empty_caption():
        return False
    return all(state.caption != load_template(name).to_dict() for name in list_templates())


def _confirm_view(bar, text) -> Callable[[str | None, dict], dict]:
    """The confirm bar as one output: its question (Markdown), or None to hide it."""
    def render(value, result) -> dict:
        return {bar: gr.update(visible=bool(value)), text: value or ""}
    return render


class TemplateGallery:
    """The gallery and its confirm bar, for the Compose tab `compose` (whose editor and size views
    the handlers return, so the canvas, the fields and the Generate size follow)."""

    def __init__(self, compose: ComposeTab):
        # compose.py builds this gallery, so its output names are read here rather than imported at the top.
        from .tabs.compose import CUSTOM_SIZE, EDITOR_VIEW, SIZE_VIEW

        self.compose = compose
        self.custom_size = CUSTOM_SIZE
        view = (*EDITOR_VIEW, *SIZE_VIEW, *OWN_OUTPUTS)
        self.on_pick = emits(*view)(self.on_pick)
        self.on_choose = emits(*view)(self.on_choose)
        self.on_replace = emits(*view)(self.on_replace)

    def build(self, ui: Components) -> None:
        """A "Templates" side panel (collapsed until opened, so it takes no room beside the canvas)
        holding the gallery and the confirm bar, wired to the Compose tab's components (its toolbar's
        template list too, so both apply the size and ask first); call it after those are built."""
        with gr.Sidebar(label="Templates", open=False, position="left", elem_id="template-sidebar") as sidebar:
            gr.Markdown("### Templates\nStart from a layout; its size comes with it.")
            with gr.Column(visible=False, elem_id="template-confirm") as bar:
                text = gr.Markdown(elem_id="template-confirm-text")
                with gr.Row():
                    replace = gr.Button("Replace", variant="primary", size="sm", elem_id="template-replace")
                    keep = gr.Button("Keep mine", size="sm", elem_id="template-keep")
            ui.add_view("template_confirm", [bar, text], _confirm_view(bar, text))
            ui.add("template_gallery", gr.Gallery(gallery_items(), columns=2, height="auto", allow_preview=False,
                                                  object_fit="contain", show_label=False, format="png",
                                                  elem_id="template-gallery", interactive=False))
        ui.add("template_sidebar", sidebar)
        ui.add("template_pending", gr.State(None))
        ui.add("template_replace", replace)
        ui.add("template_keep", keep)
        ui.on(ui["template_gallery"].select, self.on_pick, ["state"], **GLUE)
        ui.on(ui["template"].select, self.on_choose, ["state", "template"], **GLUE)  # the toolbar's list: same rules
        ui.on(replace.click, self.on_replace, ["state", "template_pending"], **GLUE)
        ui.on(keep.click, self.on_keep, **GLUE)

    def on_pick(self, state: EditorState, evt: gr.SelectData) -> dict:
        """A thumbnail was clicked: load it, or ask first when the canvas holds unsaved work."""
        names = list_templates()
        index = evt.index[0] if isinstance(evt.index, (list, tuple)) and evt.index else evt.index
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(names):
            return {}
        return self.on_choose(state, names[index])

    def on_choose(self, state: EditorState, name: str) -> dict:
        """Template `name` chosen (a gallery click, or a list of names wired to it): load it, or ask
        first when the canvas holds unsaved work."""
        if name not in list_templates():
            return {}
        if has_unsaved_work(state):
            fmt = template_format(name)
            return {"template_pending": name, "template_confirm":
                    f"**Replace your layout with “{escape(fmt.title)}”?** Your caption and size are replaced "
                    f"({fmt.width} × {fmt.height}); Undo brings the caption back."}
        return self.load(state, name)

    def on_replace(self, state: EditorState, pending: str | None) -> dict:
        """The user confirmed: load the template that was picked."""
        if pending not in list_templates():
            return {"template_pending": None, "template_confirm": None}
        return self.load(state, pending)

    @emits(*OWN_OUTPUTS)
    def on_keep(self) -> dict:
        return {"template_pending": None, "template_confirm": None, "template_gallery": gr.update(selected_index=None)}

    def load(self, state: EditorState, name: str) -> dict:
        """Template `name` with its size, as the Compose tab's editor and size views."""
        fmt = template_format(name)
        width, height = fitted_size(fmt.width, fmt.height, self.compose.limits)
        new = load_caption(state, load_template(name))
        new.width, new.height = width, height
        out = self.compose.editor_view(new, status=f"Loaded template {fmt.title} ({width} × {height}).")
        out.update(width=width, height=height, size_note=f"{width} × {height} px",
                   aspect=next((label for label, size in ASPECT_PRESETS.items() if size == (width, height)),
                               self.custom_size),
                   template_pending=None, template_confirm=None, template_gallery=gr.update(selected_index=None),
                   template_sidebar=gr.Sidebar(open=False))  # closed again: the studio gets its full width back
        return out
