"""Failed sign-ins are limited per client, so a password cannot be guessed at network speed.

Gradio's `/login` route checks a password and answers 400 when it is wrong; it has no limit of its
own (hundreds of guesses a second on loopback). `LoginRateLimit` is ASGI middleware around the
whole app that lets a client make at most `max_failures` failed attempts in a sliding window of
`window_s` seconds; further attempts are answered 429 with `Retry-After` and a sentence saying
when to try again, without reaching the password check. An attempt counts as a failure from the moment it starts (and is taken back when it
succeeds), so parallel guesses cannot slip through before the first answers arrive.

Who is "a client": the address of the connection, except when that connection comes from a proxy
on this machine (the `--share` tunnel client, a reverse proxy on loopback) or from the Spaces
proxy; then it is the last address in `X-Forwarded-For`, the one that proxy itself appended
(a client can put anything in front of it, but not after it). See docs/app.md, "Who may do what".
"""
from __future__ import annotations

import json
import math
import time
from collections import OrderedDict, deque
from typing import Callable

from .policy import is_loopback

MAX_FAILURES = 5
WINDOW_S = 60.0
MAX_CLIENTS = 10_000  # clients remembered at once; the oldest record is dropped beyond that


class LoginRateLimit:
    def __init__(self, app, *, max_failures: int = MAX_FAILURES, window_s: float = WINDOW_S,
                 trust_proxy: bool = False, clock: Callable[[], float] = time.monotonic):
        self.app = app
        self.max_failures = max_failures
        self.window_s = window_s
        self.trust_proxy = trust_proxy  # every connection comes through a proxy (a Space)
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith(("/login", "/login/")):
            await self.app(scope, receive, send)
            return
        client = self.client_of(scope)
        wait = self._wait_s(client)
        if wait:
            await self._refuse(send, wait)
            return
        attempt = self._record(client)
        status = {}

        async def watch(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, receive, watch)
        # Only failures count: a success (or a route that never answered) takes its attempt back.
        # It does not clear earlier failures, or a user with an account could reset the count
        # between guesses at someone else's password.
        if status.get("code") in (200, None):
            self._take_back(client, attempt)

    def client_of(self, scope) -> str:
        """The key a client's failures are counted under (see the module docstring)."""
        peer = (scope.get("client") or ("unknown", 0))[0]
        if self.trust_proxy or is_loopback(peer):
            for name, value in scope.get("headers", []):
                if name.lower() == b"x-forwarded-for":
                    last = value.decode("latin-1").split(",")[-1].strip()
                    if last:
                        return last
        return peer

    # ----- internals -------------------------------------------------------------------------------

    def _wait_s(self, client: str) -> int:
        """Whole seconds until `client` may try again; 0 if it may now."""
        failures = self._failures.get(client)
        if failures is None:
            return 0
        now = self.clock()
        while failures and now - failures[0] >= self.window_s:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return 0
        if len(failures) < self.max_failures:
            return 0
        return max(1, math.ceil(failures[0] + self.window_s - now))

    def _record(self, client: str) -> float:
        now = self.clock()
        self._failures.setdefault(client, deque()).append(now)
        self._failures.move_to_end(client)
        while len(self._failures) > MAX_CLIENTS:
            self._failures.popitem(last=False)
        return now

    def _take_back(self, client: str, attempt: float) -> None:
        failures = self._failures.get(client)
        if failures is not None and attempt in failures:
            failures.remove(attempt)

    async def _refuse(self, send, wait: int) -> None:
        body = json.dumps({"detail": f"Too many failed sign-ins from your address ({self.max_failures} within "
                                     f"{self.window_s:g} s). Try again in {wait} s."}).encode()
        await send({"type": "http.response.start", "status": 429,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"retry-after", str(wait).encode())]})
        await send({"type": "http.response.body", "body": body})
