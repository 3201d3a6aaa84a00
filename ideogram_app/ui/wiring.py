"""Named components and checked event wiring, shared by the app's tabs.

Each tab registers its components under names (`Components.add`) and wires its events with
`Components.on`. A handler declares with `@emits(...)` the names it may return, and returns a dict
`{name: value}` holding only what changed. That declaration is what makes wiring mistakes loud:

- at build time, `on` resolves every input name and every declared output name to a registered
  component and checks that the handler takes as many inputs as it is given; an unknown name or a
  wrong argument count raises `WiringError` naming the handler and the component;
- at call time (in the app and in unit tests that call handlers directly), `emits` refuses a result
  with a name the handler did not declare, instead of dropping it.

A name usually stands for one component that is set to the value. A *view* name stands for several
components updated from the value and the rest of the result (a row of colour pickers whose
visibility follows a count, a gallery whose selection follows another name).

`on` is also the one place where a handler's failures become messages (the page and the browser's
raw event calls are untrusted clients):
- every text input is checked before the handler runs: at most `limits.max_caption_chars`
  characters and no lone UTF-16 surrogates (which no UTF-8 response can carry);
- a `gr.Error` the handler raises reaches the page with its message escaped (`markup.escape`:
  toasts render HTML), and any other exception becomes a `gr.Error` that says which action failed
  and how (out of memory, or the exception's type and message, server paths removed), after the
  traceback is logged: nothing reaches the client as an error without a message;
- strings in the outputs are made encodable (a lone surrogate would stop the response).
Handlers raise plain-text messages and show warnings through `warn`/`inform`, which escape.
"""
from __future__ import annotations

import functools
import logging
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import gradio as gr

from ideogram_app.limits import DEFAULT_LIMITS, Limits

from .markup import escape

GPU = "gpu"  # model loading, unloading and generation: one at a time per process
EDITOR = "editor"
# UI glue: not on the API page, no MCP tool, no spinner; edits of all sessions run one at a time.
GLUE = dict(api_visibility="private", show_progress="hidden", concurrency_id=EDITOR, concurrency_limit=1)
# Gradio's own argument-count check (gradio.utils.check_function_inputs_match) only warns; these
# are its messages, turned into build errors by `Components.on`.
_ARITY_WARNING = r"Expected (at least |maximum )?\d+ arguments for function"
_SURROGATE = re.compile("[\ud800-\udfff]")
# An absolute file path (not part of a URL): unexpected errors show its last part only.
_PATH = re.compile(r"(?<![\w:/.~-])/(?:[^\s'\"/]+/)+([^\s'\"/]*)")
log = logging.getLogger(__name__)


class WiringError(RuntimeError):
    """An event wired to a name no component has, a handler that cannot take its inputs, or a
    handler result holding a name its declaration does not list."""


def warn(message: str) -> None:
    """A warning toast with plain-text `message` (escaped: toasts render HTML)."""
    gr.Warning(escape(message))


def inform(message: str) -> None:
    """An info toast with plain-text `message` (escaped)."""
    gr.Info(escape(message))


def action_name(handler: Callable) -> str:
    """What the user did, from a handler's name: `on_json_input` -> "Json input"."""
    name = getattr(handler, "__name__", "the action").removeprefix("on_").replace("_", " ")
    return name[:1].upper() + name[1:]


def hide_paths(text: str) -> str:
    """`text` with absolute file paths cut to their last part (a message must not show where the
    server keeps its files)."""
    return _PATH.sub(lambda match: match.group(1) or "<folder>", text)


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError"  # torch's, on any device


def describe_failure(what: str, err: BaseException) -> str:
    """The message for an exception nobody expected (a bug, out of memory): what failed and how."""
    detail = hide_paths(str(err).strip().splitlines()[0] if str(err).strip() else "")
    if is_out_of_memory(err):
        return (f"{what} ran out of memory{f' ({detail})' if detail else ''}; try a smaller size or fewer "
                "images. The app keeps serving.")
    return (f"{what} failed: {type(err).__name__}{f': {detail}' if detail else ''}. The app keeps serving; "
            "the server log has the details.")


def json_safe(value: Any) -> Any:
    """`value` with lone surrogates in its strings (also inside lists, tuples and dicts) replaced by
    U+FFFD: Gradio sends responses as UTF-8 JSON, and one such string would stop the response."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value) if _SURROGATE.search(value) else value
    if isinstance(value, dict):
        return {json_safe(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(json_safe(v) for v in value) if not hasattr(value, "_fields") else value
    return value


def check_text(what: str, value: Any, limits: Limits) -> None:
    """Raise ValueError unless a text input fits the caption limit and holds only characters."""
    if not isinstance(value, str):
        return
    if len(value) > limits.max_caption_chars:
        raise ValueError(f"{what}: the text is {len(value):,} characters long; at most "
                         f"{limits.max_caption_chars:,} are accepted")
    surrogate = _SURROGATE.search(value)
    if surrogate:
        raise ValueError(f"{what}: character {surrogate.start() + 1} is a lone UTF-16 surrogate "
                         f"(U+{ord(surrogate.group()):04X}), which is not a character; delete it")


def emits(*names: str) -> Callable[[Callable[..., dict]], Callable[..., dict]]:
    """Declare the output names a handler may return (see the module docstring)."""
    declared = tuple(dict.fromkeys(names))

    def decorate(fn: Callable[..., dict]) -> Callable[..., dict]:
        @functools.wraps(fn)  # keeps the signature: Gradio still injects gr.Request, gr.EventData, gr.Progress
        def checked(*args, **kwargs):
            result = fn(*args, **kwargs)
            if not isinstance(result, dict):
                raise WiringError(f"handler {fn.__qualname__} returned {type(result).__name__}, not a dict of outputs")
            unknown = [name for name in result if name not in declared]
            if unknown:
                raise WiringError(f"handler {fn.__qualname__} returned {', '.join(map(repr, unknown))}, which it "
                                  f"does not declare in @emits ({', '.join(declared) or 'nothing'})")
            return result

        checked.emits = declared
        return checked

    return decorate


@dataclass(frozen=True)
class View:
    """What one output name updates: `components`, through `render(value, result) -> {component: update}`
    (None: the single component is set to the value)."""

    components: tuple[Any, ...]
    render: Callable[[Any, dict], dict] | None = None


class Components:
    """The named components of one app (all tabs), and the events wired between them."""

    def __init__(self, demo: gr.Blocks, limits: Limits = DEFAULT_LIMITS):
        self.demo = demo
        self.limits = limits
        self._inputs: dict[str, Any] = {}
        self._views: dict[str, View] = {}

    def add(self, name: str, component, *, also: Sequence[Any] = (), render: Callable[[Any, dict], dict] | None = None):
        """Register `component` as input and output `name`; returns it, for use inside a layout. With
        `render`, the output updates `component` and the components `also` (see View)."""
        self._claim(name)
        self._inputs[name] = component
        self._views[name] = View((component, *also), render)
        return component

    def add_view(self, name: str, components: Sequence[Any], render: Callable[[Any, dict], dict]) -> None:
        """Register the output-only name `name` (see View)."""
        self._claim(name)
        self._views[name] = View(tuple(components), render)

    def __getitem__(self, name: str):
        try:
            return self._inputs[name]
        except KeyError:
            raise WiringError(f"no component named {name!r}; known: {', '.join(self._inputs)}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._views

    def on(self, triggers: Callable | Iterable[Callable], handler: Callable[..., dict], inputs: Sequence[str] = (),
           **event: Any) -> None:
        """Run `handler` on each trigger (a bound listener such as `components["undo"].click` or
        `demo.load`) with the named `inputs`; its declared outputs are updated from its result."""
        name = getattr(handler, "__qualname__", repr(handler))
        declared = getattr(handler, "emits", None)
        if declared is None:
            raise WiringError(f"handler {name} does not declare its outputs; decorate it with @emits(...)")
        in_components = [self._input(item, name) for item in inputs]
        views = {output: self._view(output, name) for output in declared}
        outputs = list(dict.fromkeys(c for view in views.values() for c in view.components))
        labels = [getattr(component, "label", None) or item for item, component in zip(inputs, in_components)]
        what = action_name(handler)

        @functools.wraps(handler)
        def event_fn(*args, **kwargs):
            try:
                for label, value in zip(labels, args):
                    check_text(label, value, self.limits)
            except ValueError as err:
                raise gr.Error(escape(str(err)), print_exception=False) from None
            try:
                return json_safe(self._updates(handler(*args, **kwargs), views, outputs))
            except gr.Error as err:
                raise gr.Error(escape(err.message), duration=err.duration, visible=err.visible, title=err.title,
                               print_exception=False) from None
            except Exception as err:
                log.exception("%s (%s) failed", what, name)
                raise gr.Error(escape(describe_failure(what, err)), duration=None, print_exception=False) from None

        for trigger in [triggers] if callable(triggers) else list(triggers):
            with warnings.catch_warnings():
                warnings.filterwarnings("error", message=_ARITY_WARNING)
                try:
                    trigger(event_fn, in_components, outputs, **event)
                except UserWarning as err:
                    raise WiringError(f"handler {name} cannot take its inputs ({', '.join(inputs) or 'none'}): "
                                      f"{err}") from None

    # ----- internals -----------------------------------------------------------------------------
    def _claim(self, name: str) -> None:
        if name in self._views:
            raise WiringError(f"component name {name!r} is registered twice")

    def _input(self, name: str, handler: str):
        if name not in self._inputs:
            raise WiringError(f"handler {handler} reads {name!r}, but no component has that name; "
                              f"known: {', '.join(self._inputs)}")
        return self._inputs[name]

    def _view(self, name: str, handler: str) -> View:
        if name not in self._views:
            raise WiringError(f"handler {handler} emits {name!r}, but no component has that name; "
                              f"known: {', '.join(self._views)}")
        return self._views[name]

    @staticmethod
    def _updates(result: dict, views: dict[str, View], outputs: list) -> dict | None:
        """{name: value} -> {component: update}; updates of one component from two names are merged."""
        if not outputs:
            return None
        merged: dict[Any, Any] = {}
        for name, value in result.items():
            view = views[name]
            updates = view.render(value, result) if view.render else {view.components[0]: value}
            for component, update in updates.items():
                merged[component] = _merge(merged[component], update) if component in merged else update
        # Gradio reads an empty dict as one plain value: "nothing changed" must name a component.
        return merged or {outputs[0]: gr.skip()}


def _as_update(value: Any) -> dict:
    return dict(value) if isinstance(value, dict) and value.get("__type__") == "update" else gr.update(value=value)


def _merge(first: Any, second: Any) -> dict:
    """Two updates of one component (a value and, from a view, its label) become one."""
    return {**_as_update(first), **_as_update(second)}
