"""Wiring mistakes fail when the app is built (unknown names, wrong argument counts, undeclared
outputs), never silently at run time; results become component updates as declared; every failure of
a handler reaches the page as an escaped message without server paths, and text inputs are bounded."""
import gradio as gr
import pytest

from ideogram_app.limits import Limits
from ideogram_app.ui.app import build_demo
from ideogram_app.ui.markup import escape
from ideogram_app.ui.model_slot import ModelSlot
from ideogram_app.ui.wiring import Components, WiringError, emits, hide_paths, json_safe


@emits("shown")
def show(text):
    return {"shown": text.upper()}


def small_app(build):
    with gr.Blocks() as demo:
        ui = Components(demo)
        ui.add("text", gr.Textbox())
        ui.add("shown", gr.Markdown())
        ui.add("go", gr.Button())
        build(ui)
    return demo


def test_unknown_input_name_fails_at_build():
    with pytest.raises(WiringError, match=r"handler show reads 'txet', but no component has that name; known: text"):
        small_app(lambda ui: ui.on(ui["go"].click, show, ["txet"]))


def test_unknown_output_name_fails_at_build():
    @emits("shown", "sohwn")
    def typo(text):
        return {"shown": text}

    with pytest.raises(WiringError, match=r"typo emits 'sohwn', but no component has that name"):
        small_app(lambda ui: ui.on(ui["go"].click, typo, ["text"]))


def test_unknown_component_lookup_and_duplicate_names_fail():
    with pytest.raises(WiringError, match="no component named 'button'"):
        small_app(lambda ui: ui["button"])
    with pytest.raises(WiringError, match="'text' is registered twice"):
        small_app(lambda ui: ui.add("text", gr.Textbox()))


def test_handler_without_declared_outputs_fails_at_build():
    with pytest.raises(WiringError, match=r"does not declare its outputs; decorate it with @emits"):
        small_app(lambda ui: ui.on(ui["go"].click, lambda text: {"shown": text}, ["text"]))


@pytest.mark.parametrize("inputs", [[], ["text", "shown"]])
def test_wrong_number_of_inputs_fails_at_build(inputs):
    with pytest.raises(WiringError, match=r"handler show cannot take its inputs .*Expected 1 arguments"):
        small_app(lambda ui: ui.on(ui["go"].click, show, inputs))


def test_a_result_outside_the_declaration_is_refused_when_returned():
    @emits("shown")
    def leaky(text):
        return {"shown": text, "text": ""}

    with pytest.raises(WiringError, match=r"leaky returned 'text', which it does not declare in @emits \(shown\)"):
        leaky("x")
    with pytest.raises(WiringError, match="returned str, not a dict"):
        emits("shown")(lambda text: text)("x")


def test_results_become_updates_and_views_merge_with_plain_outputs():
    def build(ui):
        ui.add_view("shown_label", [ui["shown"]], lambda label, result: {ui["shown"]: gr.update(label=label)})

        @emits("shown", "shown_label")
        def both(text):
            return {"shown": text, "shown_label": "caption"} if text else {}

        ui.on(ui["go"].click, both, ["text"])
        ui.on(ui["text"].submit, show, ["text"])

    demo = small_app(build)
    both, upper = (fn.fn for fn in demo.fns.values())
    shown = next(block for block in demo.blocks.values() if isinstance(block, gr.Markdown))
    assert both("hi") == {shown: {"__type__": "update", "value": "hi", "label": "caption"}}
    assert both("") == {shown: {"__type__": "update"}}  # nothing changed: a skip, not an empty dict
    assert upper("hi") == {shown: "HI"}


def test_the_app_builds_with_every_handler_declared():
    demo = build_demo(ModelSlot())
    handlers = {fn.name for fn in demo.fns.values()}
    assert {"on_canvas_edit", "on_generate", "on_stop", "on_load_model", "on_estimate"} <= handlers


def registered(build):
    """The event functions of a small app, as Gradio calls them."""
    demo = small_app(build)
    return [fn.fn for fn in demo.fns.values()]


def test_a_failing_handler_reaches_the_page_with_a_message_and_no_server_path():
    @emits("shown")
    def on_crash(text):
        raise RuntimeError(f"cannot open /srv/private/cache/{text}.bin (see https://example.org/a/b)")

    (call,) = registered(lambda ui: ui.on(ui["go"].click, on_crash, ["text"]))
    with pytest.raises(gr.Error) as err:
        call("<img src=x>")
    assert err.value.message == escape("Crash failed: RuntimeError: cannot open <img src=x>.bin (see "
                                       "https://example.org/a/b). The app keeps serving; the server log has the "
                                       "details.")
    assert "/srv/private" not in err.value.message and "<img" not in err.value.message


def test_refusals_keep_their_message_escaped_and_memory_errors_say_so():
    @emits("shown")
    def on_refuse(text):
        raise gr.Error(f"bad value {text}", duration=3)

    @emits("shown")
    def on_big(text):
        raise MemoryError()

    refuse, big = registered(lambda ui: (ui.on(ui["go"].click, on_refuse, ["text"]),
                                         ui.on(ui["text"].submit, on_big, ["text"])))
    with pytest.raises(gr.Error) as err:
        refuse("</div><script>alert(1)</script>")
    assert err.value.message == escape("bad value </div><script>alert(1)</script>") and err.value.duration == 3
    with pytest.raises(gr.Error) as err:
        big("x")
    assert err.value.message == escape("Big ran out of memory; try a smaller size or fewer images. The app keeps "
                                       "serving.")


def test_text_inputs_are_bounded_and_made_of_characters():
    calls = []

    @emits("shown")
    def on_echo(text):
        calls.append(text)
        return {"shown": text}

    def build(ui):
        ui.limits = Limits(max_caption_chars=10)
        ui.on(ui["go"].click, on_echo, ["text"])

    (call,) = registered(build)
    with pytest.raises(gr.Error, match="the text is 11 characters long&#59; at most 10 are accepted"):
        call("x" * 11)
    with pytest.raises(gr.Error, match="character 2 is a lone UTF&#45;16 surrogate"):
        call("a\ud800")
    assert calls == []  # refused before the handler ran
    assert list(call("ok").values()) == ["ok"]


def test_outputs_are_made_encodable():
    assert json_safe({"a": ["x\udfff", ("y", 1)], "b\ud800": None}) == {"a": ["x\ufffd", ("y", 1)], "b\ufffd": None}


def test_hide_paths_keeps_urls_and_names():
    assert hide_paths("no /tmp/gradio/abc/x.png here, nor '/home/u/model'") == "no x.png here, nor 'model'"
    assert hide_paths("see https://huggingface.co/ideogram-ai/x and C:/nothing") == \
        "see https://huggingface.co/ideogram-ai/x and C:/nothing"
