"""Command line, environment and launch options: localhost, LAN, share links, Spaces.

Every flag has an environment equivalent (flags win), so a Space or a container can configure the
app without a command line.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Mapping

import gradio as gr

from ideogram_app.pipeline.placement import MEMORY_MODES

from .model_slot import ModelSlot

DEFAULT_QUEUE_SIZE = 32
TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class ServeOptions:
    model: str | None = None
    memory: str = "full"
    host: str | None = None
    port: int | None = None
    share: bool = False
    auth: tuple[str, str] | None = None
    mcp: bool = False
    queue_size: int = DEFAULT_QUEUE_SIZE


def parse_auth(text: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise argparse.ArgumentTypeError(f"--auth needs USER:PASSWORD, got {text!r}")
    return user, password


def parse_options(argv: list[str] | None = None, environ: Mapping[str, str] = os.environ) -> ServeOptions:
    parser = argparse.ArgumentParser(prog="python app.py", description="Ideogram 4 Layout Studio (Gradio app).")
    parser.add_argument("--model", default=environ.get("IDEOGRAM_MODEL"),
                        help="model to load at start: local folder or repo id (env IDEOGRAM_MODEL)")
    parser.add_argument("--memory", choices=MEMORY_MODES, default=environ.get("IDEOGRAM_MEMORY", "full"),
                        help="memory mode for the model (env IDEOGRAM_MEMORY)")
    parser.add_argument("--host", default=environ.get("GRADIO_SERVER_NAME"),
                        help="address to listen on, e.g. 0.0.0.0 for the LAN (env GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, default=int(environ["GRADIO_SERVER_PORT"])
                        if environ.get("GRADIO_SERVER_PORT") else None, help="port (env GRADIO_SERVER_PORT)")
    parser.add_argument("--share", action="store_true", default=environ.get("IDEOGRAM_SHARE", "").lower() in TRUE,
                        help="create a public *.gradio.live link; pair it with --auth (env IDEOGRAM_SHARE=1)")
    parser.add_argument("--auth", type=parse_auth, default=parse_auth(environ["IDEOGRAM_AUTH"])
                        if environ.get("IDEOGRAM_AUTH") else None, help="require USER:PASSWORD (env IDEOGRAM_AUTH)")
    parser.add_argument("--mcp", action="store_true", default=environ.get("GRADIO_MCP_SERVER", "").lower() in TRUE,
                        help="also serve the public endpoints as MCP tools (env GRADIO_MCP_SERVER=1)")
    parser.add_argument("--queue-size", type=int, default=int(environ.get("IDEOGRAM_QUEUE_SIZE", DEFAULT_QUEUE_SIZE)),
                        help="most requests waiting in the queue (env IDEOGRAM_QUEUE_SIZE)")
    args = parser.parse_args(argv)
    return ServeOptions(model=args.model, memory=args.memory, host=args.host, port=args.port, share=args.share,
                        auth=args.auth, mcp=args.mcp, queue_size=args.queue_size)


def launch_kwargs(options: ServeOptions) -> dict:
    kwargs: dict = {"share": options.share, "mcp_server": options.mcp, "footer_links": ["api", "gradio", "settings"]}
    if options.host:
        kwargs["server_name"] = options.host
    if options.port:
        kwargs["server_port"] = options.port
    if options.auth:
        kwargs["auth"] = options.auth
        kwargs["auth_message"] = "Ideogram 4 Layout Studio: sign in with the credentials given to you."
    return kwargs


def prepare(demo: gr.Blocks, slot: ModelSlot, options: ServeOptions) -> gr.Blocks:
    """Load the start-up model (a failure is reported and the app still serves) and bound the queue."""
    if options.model:
        print(f"Loading model {options.model} (memory mode {options.memory})…", flush=True)
        try:
            slot.load(options.model, options.memory)
            print("Model loaded.", flush=True)
        except Exception as err:  # the app must still start: composing and the caption API need no model
            print(f"Could not load {options.model}: {err}\nThe app starts without a model.", file=sys.stderr,
                  flush=True)
    return demo.queue(default_concurrency_limit=1, max_size=options.queue_size)


def main(demo: gr.Blocks, slot: ModelSlot, argv: list[str] | None = None) -> None:
    options = parse_options(argv)
    prepare(demo, slot, options).launch(**launch_kwargs(options))
