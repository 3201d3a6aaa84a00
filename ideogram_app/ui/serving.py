"""Command line, environment and launch options: localhost, LAN, share links, Spaces.

Every flag has an environment equivalent (flags win), so a Space or a container can configure the
app without a command line. Combinations that cannot be served safely (`--admin` without `--auth`,
`--mcp` with `--auth`, see `check_options`) stop the start with a usage error instead of starting
something weaker than asked for. Who may change the model follows from these options (policy.py).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, replace
from typing import Mapping

import gradio as gr
from starlette.middleware import Middleware

from ideogram_app.limits import DEFAULT_LIMITS, Limits
from ideogram_app.pipeline.placement import MEMORY_MODES
from ideogram_app.pipeline.sizes import MULTIPLE
from ideogram_app.speed import SPEED_MODES

from .login_limit import MAX_FAILURES, WINDOW_S, LoginRateLimit
from .model_slot import ModelSlot
from .policy import Policy

DEFAULT_QUEUE_SIZE = 32
TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class ServeOptions:
    model: str | None = None
    memory: str = "full"
    mode: str | None = None  # speed mode (ideogram_app.speed); None: the default for the device
    devices: tuple[str, ...] | None = None  # two devices: CFG-parallel
    host: str | None = None
    port: int | None = None
    share: bool = False
    auth: tuple[tuple[str, str], ...] = ()  # (user, password) pairs; empty: no logins
    admins: tuple[str, ...] = ()
    models_dirs: tuple[str, ...] = ()
    allow_hub: bool | None = None  # None: the policy's default (allowed only in the local default)
    allow_training: bool = False  # training on a Space or behind --share (policy.py)
    mcp: bool = False
    queue_size: int = DEFAULT_QUEUE_SIZE
    max_side: int = DEFAULT_LIMITS.max_side

    @property
    def limits(self) -> Limits:
        """The app's bounds: the defaults, with the largest side (and so the pixel budget) raised or
        lowered by --max-side."""
        return replace(DEFAULT_LIMITS, max_side=self.max_side, max_pixels=self.max_side**2)


def parse_auth(text: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise argparse.ArgumentTypeError(f"--auth needs USER:PASSWORD, got {text!r}")
    return user, password


def _env_flag(environ: Mapping[str, str], name: str) -> bool | None:
    value = environ.get(name, "").strip().lower()
    return None if not value else value in TRUE


def parse_options(argv: list[str] | None = None, environ: Mapping[str, str] = os.environ) -> ServeOptions:
    parser = argparse.ArgumentParser(prog="python app.py", description="Ideogram 4 Layout Studio (Gradio app).")
    parser.add_argument("--model", default=environ.get("IDEOGRAM_MODEL"),
                        help="model to load at start: local folder or repo id (env IDEOGRAM_MODEL); it serves "
                             "everyone and is not limited by --models-dir")
    parser.add_argument("--memory", choices=MEMORY_MODES, default=environ.get("IDEOGRAM_MEMORY", "full"),
                        help="memory mode for the model (env IDEOGRAM_MEMORY)")
    parser.add_argument("--mode", choices=SPEED_MODES, default=environ.get("IDEOGRAM_MODE") or None,
                        help="speed mode for the model: eager, exact (compiled; the default on CUDA) or fast "
                             "(FP8 matrix multiplies) (env IDEOGRAM_MODE)")
    parser.add_argument("--devices", default=environ.get("IDEOGRAM_DEVICES") or None, metavar="DEV,DEV",
                        help="two devices for CFG-parallel, e.g. cuda:0,cuda:1 (env IDEOGRAM_DEVICES)")
    parser.add_argument("--host", default=environ.get("GRADIO_SERVER_NAME"),
                        help="address to listen on, e.g. 0.0.0.0 for the LAN (env GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, default=int(environ["GRADIO_SERVER_PORT"])
                        if environ.get("GRADIO_SERVER_PORT") else None, help="port (env GRADIO_SERVER_PORT)")
    parser.add_argument("--share", action="store_true", default=bool(_env_flag(environ, "IDEOGRAM_SHARE")),
                        help="create a public *.gradio.live link; without --auth, model switching and training "
                             "are disabled (env IDEOGRAM_SHARE=1)")
    parser.add_argument("--auth", type=parse_auth, action="append", metavar="USER:PASSWORD",
                        help="require a login; repeat for more users (env IDEOGRAM_AUTH, one USER:PASSWORD a line)")
    parser.add_argument("--admin", action="append", metavar="USER",
                        help="an --auth user who may load/unload models and train; repeatable "
                             "(env IDEOGRAM_ADMINS, comma-separated)")
    parser.add_argument("--models-dir", action="append", metavar="DIR",
                        help="folder whose model folders operators may load; repeatable "
                             f"(env IDEOGRAM_MODELS_DIRS, separated by {os.pathsep!r})")
    parser.add_argument("--allow-hub", action=argparse.BooleanOptionalAction, default=None,
                        help="whether operators may load Hub ids (default: only in the local default; "
                             "env IDEOGRAM_ALLOW_HUB=1/0)")
    parser.add_argument("--allow-training", action="store_true",
                        default=bool(_env_flag(environ, "IDEOGRAM_ALLOW_TRAINING")),
                        help="let operators train on a Space or behind --share, where training is off by default "
                             "(env IDEOGRAM_ALLOW_TRAINING=1); under --auth only --admin users train")
    parser.add_argument("--mcp", action="store_true", default=bool(_env_flag(environ, "GRADIO_MCP_SERVER")),
                        help="also serve the public endpoints as MCP tools; not with --auth (env GRADIO_MCP_SERVER=1)")
    parser.add_argument("--queue-size", type=int, default=int(environ.get("IDEOGRAM_QUEUE_SIZE", DEFAULT_QUEUE_SIZE)),
                        help="most requests waiting in the queue (env IDEOGRAM_QUEUE_SIZE)")
    parser.add_argument("--max-side", type=int, default=int(environ.get("IDEOGRAM_MAX_SIDE", DEFAULT_LIMITS.max_side)),
                        help=f"largest image side in pixels a request may ask for (default {DEFAULT_LIMITS.max_side}; "
                             "env IDEOGRAM_MAX_SIDE); the pixel budget is its square")
    args = parser.parse_args(argv)
    try:
        auth = tuple(args.auth) if args.auth else tuple(
            parse_auth(line.strip()) for line in environ.get("IDEOGRAM_AUTH", "").splitlines() if line.strip())
    except argparse.ArgumentTypeError as err:
        parser.error(f"{err} (from IDEOGRAM_AUTH)")
    admins = tuple(args.admin) if args.admin else tuple(
        name.strip() for name in environ.get("IDEOGRAM_ADMINS", "").split(",") if name.strip())
    models_dirs = tuple(args.models_dir) if args.models_dir else tuple(
        d for d in environ.get("IDEOGRAM_MODELS_DIRS", "").split(os.pathsep) if d.strip())
    allow_hub = args.allow_hub if args.allow_hub is not None else _env_flag(environ, "IDEOGRAM_ALLOW_HUB")
    devices = tuple(d.strip() for d in args.devices.split(",") if d.strip()) if args.devices else None
    if args.mode is not None and args.mode not in SPEED_MODES:
        parser.error(f"--mode (IDEOGRAM_MODE) {args.mode!r}: choose one of {', '.join(SPEED_MODES)}")
    options = ServeOptions(model=args.model, memory=args.memory, mode=args.mode, devices=devices, host=args.host, port=args.port, share=args.share,
                           auth=auth, admins=admins, models_dirs=models_dirs, allow_hub=allow_hub,
                           allow_training=args.allow_training, mcp=args.mcp,
                           queue_size=args.queue_size, max_side=args.max_side)
    problem = check_options(options)
    if problem:
        parser.error(problem)
    return options


def check_options(options: ServeOptions) -> str | None:
    """What is wrong with a combination of options (the flag parser exits with it), or None."""
    users = [user for user, _ in options.auth]
    twice = sorted({user for user in users if users.count(user) > 1})
    if twice:
        return f"--auth (IDEOGRAM_AUTH): user {twice[0]!r} is given twice"
    if options.admins and not options.auth:
        return "--admin (IDEOGRAM_ADMINS) needs --auth: operators are users who sign in"
    unknown = [admin for admin in options.admins if admin not in users]
    if unknown:
        return f"--admin {unknown[0]!r}: no --auth user has that name (users: {', '.join(users)})"
    missing = [d for d in options.models_dirs if not os.path.isdir(os.path.expanduser(d))]
    if missing:
        return f"--models-dir (IDEOGRAM_MODELS_DIRS) {missing[0]!r} is not a folder"
    if not DEFAULT_LIMITS.min_side <= options.max_side or options.max_side % MULTIPLE:
        return (f"--max-side (IDEOGRAM_MAX_SIDE) {options.max_side} must be a multiple of {MULTIPLE} and at least "
                f"{DEFAULT_LIMITS.min_side}")
    if options.devices is not None and len(options.devices) != 2:
        return f"--devices (IDEOGRAM_DEVICES) needs two devices for CFG-parallel, e.g. cuda:0,cuda:1; got {options.devices}"
    if options.mcp and options.auth:
        return ("--mcp cannot be combined with --auth: Gradio 6.31 serves the MCP tool list without a login and "
                "its tool calls fail for signed-in clients, so MCP would be open to anyone and useless to your "
                "users. Drop --mcp, or run a second instance with --mcp on localhost without --auth.")
    return None


def launch_kwargs(options: ServeOptions, environ: Mapping[str, str] = os.environ) -> dict:
    kwargs: dict = {"share": options.share, "mcp_server": options.mcp, "footer_links": ["api", "gradio", "settings"]}
    # Uploads over the limit are refused by Gradio's upload route. show_error: every handler turns its own
    # failures into messages (wiring.py, api.py); what is left are Gradio's checks of a request (too few
    # inputs, a value its component cannot read), whose messages must reach the client too.
    kwargs.update(max_file_size=options.limits.max_upload_bytes, show_error=True)
    if options.host:
        kwargs["server_name"] = options.host
    if options.port:
        kwargs["server_port"] = options.port
    if options.auth:
        kwargs["auth"] = list(options.auth)
        kwargs["auth_message"] = (
            "Ideogram 4 Layout Studio: sign in with the credentials given to you. After "
            f"{MAX_FAILURES} failed sign-ins from one address within {WINDOW_S:g} s, sign-in is refused for a while.")
        # Behind the Spaces proxy every connection comes from the proxy: count by X-Forwarded-For.
        kwargs["app_kwargs"] = {"middleware": [Middleware(LoginRateLimit, trust_proxy=bool(environ.get("SPACE_ID")))]}
    return kwargs


def prepare(demo: gr.Blocks, slot: ModelSlot, options: ServeOptions) -> gr.Blocks:
    """Load the start-up model (a failure is reported and the app still serves) and bound the queue."""
    if options.model:
        print(f"Loading model {options.model} (memory mode {options.memory})…", flush=True)
        try:
            slot.load(options.model, options.memory, mode=options.mode, devices=options.devices)
            print("Model loaded.", flush=True)
        except Exception as err:  # the app must still start: composing and the caption API need no model
            print(f"Could not load {options.model}: {err}\nThe app starts without a model.", file=sys.stderr,
                  flush=True)
    return demo.queue(default_concurrency_limit=1, max_size=options.queue_size)


def serve(demo: gr.Blocks, slot: ModelSlot, options: ServeOptions, policy: Policy) -> None:
    """Say who may change the model, load the start-up model and launch (blocks until stopped)."""
    for note in policy.startup_notes():
        print(note, flush=True)
    prepare(demo, slot, options).launch(**launch_kwargs(options))
