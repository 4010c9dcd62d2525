"""The request-body limit, for every route.

``RXLEDGER_MAX_BODY_BYTES`` bounds what any request may send, before a
route, its signature check or its own smaller limit reads the body: a body
declared larger is refused at once, and one that streams past the limit is
refused as soon as it does, so no request makes the service hold more than
the limit in memory. Both are ``413`` ``too-large`` problems.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import problem_for, problem_response
from api.routes.statements import TooLargeError


class BodyLimit:
    """ASGI middleware: request bodies of at most ``limit`` bytes."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                refusal = TooLargeError(
                    f"request body is {int(value)} bytes; at most {self.limit} accepted"
                )
                await problem_response(problem_for(refusal))(scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # raised where the route reads its body: the app's error
                    # handlers answer with the problem
                    raise TooLargeError(f"request body exceeds {self.limit} bytes")
            return message

        await self.app(scope, limited, send)
