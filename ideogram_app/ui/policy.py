"""Who may do what on a running app: the one place that decides, per request, on the server.

One model is loaded per process and shared by every visitor (model_slot.py), and training will
use the same GPU, so changing either is an *operator*'s job. Who counts as an operator follows
from how the app was started (docs/app.md, "Who may do what"):

- with logins (`--auth`), exactly the users named by `--admin`;
- without logins, everyone only in the *local default*: listening on a loopback address, no
  `--share` link and not a Hugging Face Space, so the only people who can reach the app are the
  users of this machine. A LAN address, a share link or a Space without logins has no operator.

Training is further off on a Space and behind a `--share` link unless the app was started with
`--allow-training`: a public address makes a mistake there (a run left going, a dataset of someone
else's images on the server's disk) far more costly, so it needs the operator to opt in explicitly.
Under `--auth` the operators are still only the `--admin` users.

Every event that loads, unloads, lists server folders or reads a model folder asks `require`
(or `is_operator`) with its `gr.Request`; hiding a button is only the visible half, because the
browser's private events can be called by anyone who has the page. Model sources come from an
allow-list (`--models-dir`, Hub ids only with `--allow-hub`) checked by `resolve_source`, whose
refusal is the same sentence whether a path is missing or forbidden, so no answer tells a visitor
anything about the server's files outside the list.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ideogram_app.pipeline.hub import split_source

if TYPE_CHECKING:  # serving.py imports this module
    from .serving import ServeOptions

CHANGE_MODEL = "load or unload models"
TRAIN = "train"
ACTIONS = (CHANGE_MODEL, TRAIN)
# How pipeline/hub.py tells a repo id from a folder: a hub prefix, or the shape owner/name.
HUB_PREFIXES = ("hf://", "huggingface://", "ms://", "modelscope://")
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
DEFAULT_HOST = "127.0.0.1"  # what Gradio listens on when no address is given


class NotAllowedError(PermissionError):
    """A request the policy refuses; the message (plain text: whoever shows it escapes it) says
    what is refused and why, nothing more."""


def is_loopback(host: str | None) -> bool:
    """Whether listening on `host` keeps the app reachable from this machine only."""
    host = (host or DEFAULT_HOST).strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost may resolve anywhere
        return False


@dataclass(frozen=True)
class Policy:
    """The launch facts the decisions follow from. The defaults are `python app.py` on a laptop."""

    host: str | None = None
    share: bool = False
    space: bool = False  # running as a Hugging Face Space (SPACE_ID is set)
    auth: bool = False  # logins required
    admins: frozenset[str] = frozenset()
    models_dirs: tuple[Path, ...] = ()
    allow_hub: bool | None = None  # None: allowed only in the local default
    allow_training: bool = False  # training on a Space or behind --share (off without it)

    @classmethod
    def from_options(cls, options: ServeOptions, environ: Mapping[str, str] = os.environ) -> Policy:
        """The policy of an app started with parsed `options` (serving.ServeOptions)."""
        return cls(host=options.host, share=options.share, space=bool(environ.get("SPACE_ID")),
                   auth=bool(options.auth), admins=frozenset(options.admins),
                   models_dirs=tuple(Path(os.path.abspath(os.path.expanduser(d))) for d in options.models_dirs),
                   allow_hub=options.allow_hub, allow_training=options.allow_training)

    # ----- who is an operator -------------------------------------------------------------------

    @property
    def local(self) -> bool:
        """Only the users of this machine can reach the app."""
        return is_loopback(self.host) and not self.share and not self.space

    @property
    def local_operator(self) -> bool:
        """The local default without logins: whoever reaches the app is the machine's user."""
        return self.local and not self.auth

    @property
    def hub_allowed(self) -> bool:
        """Hub downloads use the server's HF_TOKEN and disk: by default only the machine's own user."""
        return self.local_operator if self.allow_hub is None else self.allow_hub

    @property
    def any_operator(self) -> bool:
        """Whether anyone at all may change the model (False: the panel is read-only for all)."""
        return bool(self.admins) if self.auth else self.local

    @property
    def training_allowed(self) -> bool:
        """Whether operators may train at all: not on a Space or behind --share unless --allow-training."""
        return self.allow_training or not (self.share or self.space)

    def is_operator(self, request: Any) -> bool:
        """Whether the sender of `request` (a gr.Request, None outside a server) is an operator."""
        if self.auth:
            return getattr(request, "username", None) in self.admins
        return self.local

    def refusal(self, request: Any, action: str = CHANGE_MODEL) -> str | None:
        """Why the sender of `request` may not do `action` (one of ACTIONS), or None if they may."""
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; the policy knows {', '.join(ACTIONS)}")
        if not self.is_operator(request):
            return f"Only an operator may {action} here: {self.reason(request)}"
        if action == TRAIN and not self.training_allowed:
            return f"Training is off on this server: {self._training_off()}"
        return None

    def require(self, request: Any, action: str = CHANGE_MODEL) -> None:
        """Raise NotAllowedError unless the sender of `request` may do `action`."""
        refusal = self.refusal(request, action)
        if refusal is not None:
            raise NotAllowedError(refusal)

    def reason(self, request: Any) -> str:
        """Why the sender of `request` is not an operator, in terms of how the app was started."""
        if self.auth and self.admins:
            user = getattr(request, "username", None)
            who = f"you are signed in as {user!r}" if user else "you are not signed in"
            return f"{who}, and only the users named by --admin are operators."
        return self._nobody_is_operator()

    def startup_notes(self) -> list[str]:
        """What the console says at start about who may change the model and train."""
        if self.local_operator:
            return []
        if not self.any_operator:
            return [f"Model switching and training are disabled for everyone: {self._nobody_is_operator()}"]
        if not self.training_allowed:
            return [f"Operators (may load or unload models): {', '.join(sorted(self.admins))}.",
                    f"Training is off: {self._training_off()}"]
        return [f"Operators (may load or unload models and train): {', '.join(sorted(self.admins))}."]

    def _training_off(self) -> str:
        where = "it runs as a Hugging Face Space" if self.space else "it is shared through a public link (--share)"
        return (f"{where}, and training is off there unless the app is started with --allow-training "
                "(env IDEOGRAM_ALLOW_TRAINING=1).")

    def _nobody_is_operator(self) -> str:
        name_one = "Start it with --auth USER:PASSWORD --admin USER to name an operator."
        if self.auth:
            return "the app was started with --auth but without --admin, so nobody is an operator."
        if self.share:
            return f"the app is shared through a public link without logins (--share without --auth). {name_one}"
        if self.space:
            return ("the app runs as a Hugging Face Space without logins; the model is chosen by the Space's "
                    "settings (IDEOGRAM_MODEL).")
        return f"the app listens on {self.host} (reachable from other machines) without logins. {name_one}"

    # ----- which model sources -------------------------------------------------------------------

    def describe_sources(self) -> str:
        """The allow-list in one sentence, for operators and for refusals."""
        if self.local_operator and not self.models_dirs:
            local = "any local folder"
        elif self.models_dirs:
            local = "folders under " + ", ".join(str(d) for d in self.models_dirs)
        else:
            local = "no local folders (start the app with --models-dir DIR to allow some)"
        hub = ("Hub ids such as ideogram-ai/ideogram-4-fp8" if self.hub_allowed
               else "no Hub ids (start the app with --allow-hub to allow them)")
        return f"{local}; {hub}"

    def resolve_source(self, text: Any) -> str:
        """The string to hand the loader for what an operator typed, or NotAllowedError.

        A Hub id (a hub prefix, or owner/name) is returned with its hub prefix, so the loader never
        reads it as a folder relative to the server's working directory. Anything else is a local
        folder: absolute, or relative to a models directory. `..` is refused outright, so the
        lexical check against the models directories agrees with what the file system opens
        (symlinks placed in a models directory by the server's owner are followed). Missing and
        forbidden folders get the same sentence.
        """
        text = text.strip() if isinstance(text, str) else ""
        if not text:
            raise NotAllowedError("Give a model: a repo id such as ideogram-ai/ideogram-4-fp8 or a local folder; "
                                  f"this server allows {self.describe_sources()}.")
        hub = self._hub_source(text)
        if hub is not None and self.hub_allowed:
            return hub
        if not text.startswith(HUB_PREFIXES):
            folder = self._local_folder(text)
            if folder is not None:
                return str(folder)
        raise NotAllowedError(f"{text!r} is not an allowed model source; this server allows "
                              f"{self.describe_sources()}.")

    def model_folders(self) -> list[str]:
        """The folders directly inside the models directories (what an operator can pick from)."""
        found: list[str] = []
        for directory in self.models_dirs:
            try:
                found += sorted(str(p) for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:  # a models directory that vanished after start lists nothing
                continue
        return found

    # ----- internals -------------------------------------------------------------------------------

    def _hub_source(self, text: str) -> str | None:
        """`text` as an explicitly prefixed hub source, or None if it is not shaped like a repo id."""
        for prefix in HUB_PREFIXES:
            if text.startswith(prefix):
                return text if REPO_ID.match(text[len(prefix):]) else None
        if self.local_operator and not self.models_dirs and os.path.exists(os.path.expanduser(text)):
            return None  # the local default keeps the loader's rule: an existing path is a folder
        if REPO_ID.match(text):
            return ("ms://" if split_source(text)[1] == "modelscope" else "hf://") + text
        return None

    def _local_folder(self, text: str) -> Path | None:
        """The allowed folder `text` names, or None (missing or outside the allow-list alike)."""
        if self.local_operator and not self.models_dirs:
            folder = Path(os.path.abspath(os.path.expanduser(text)))
            return folder if folder.is_dir() else None
        if ".." in Path(text).parts:
            return None
        path = Path(os.path.expanduser(text))
        candidates = [path] if path.is_absolute() else [d / path for d in self.models_dirs]
        for candidate in map(os.path.abspath, candidates):
            folder = Path(candidate)
            if any(folder.is_relative_to(d) for d in self.models_dirs) and folder.is_dir():
                return folder
        return None
