"""Thrift over HTTP on the client port: ``POST`` requests whose bodies carry the calls.

What THttpClient (Python, C++, Java), the Node.js library and browsers' XHR clients send:
``POST <any path> HTTP/1.1`` with ``Content-Length`` and the protocol's bytes as the body
(binary, compact, JSON or THeader frames; ``Content-Type`` ``application/x-thrift`` or
``application/vnd.apache.thrift.*``, not checked). The answer is ``200 OK`` carrying the
replies of the calls in the body (an empty body for oneway calls, except to Apache's C++
THttpClient, which reads no response to a oneway call and gets none), ``Content-Type:
application/x-thrift``, with the request's keep-alive honoured (HTTP/1.1 default on, HTTP/1.0
only with ``Connection: keep-alive``).

Requests on one connection are served one at a time, in order: the body of the next request
is not read until the current one is answered (pipelined requests wait, bounded). The body
is handed on as it arrives, so a large call needs no more buffering than on a plain socket.

Refused, with a response and then a close (one log line, by the server): a method other
than POST (405), no ``Content-Length`` or a chunked body (411), a body over
``max_frame_size`` (413), a request head over ``max_header_size`` or unreadable (400).
"""

from __future__ import annotations

from gateway.thrift import Limits, MalformedMessage

_END_OF_HEAD = b"\r\n\r\n"
_REASONS = {
    200: "OK",
    400: "Bad Request",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    500: "Internal Server Error",
}


class HttpError(MalformedMessage):
    """A request that is refused with ``status`` (the connection then closes)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def response(status: int, body: bytes, *, keep_alive: bool, content_type: str) -> bytes:
    head = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: keep-alive" if keep_alive else "Connection: close",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


class Http:
    """The HTTP layer of one client connection (see the module docstring)."""

    name = "http"

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._buf = bytearray()  # bytes after the current request's body (the next request)
        self._left = 0  # body bytes of the current request still to come
        self._in_request = False  # a request head was read and is not answered yet
        self._reply = bytearray()  # the current response's body, as replies come
        self.keep_alive = True
        self._silent_oneway = False  # a request without replies gets no response (C++)
        self.closing = False  # the last response went out with "Connection: close"

    @property
    def held(self) -> int:
        return len(self._buf)  # a request head not yet whole, or requests pipelined behind

    @property
    def awaiting_response(self) -> bool:
        """The current request's body is all in: once its calls are answered, respond."""
        return self._in_request and self._left == 0

    def unwrap(self, data: bytes) -> bytes:
        if self._in_request and self._left:
            take = data[: self._left]
            self._left -= len(take)
            self._buf += data[len(take) :]
            self._check_backlog()
            return take
        self._buf += data
        if self._in_request or self.closing:
            self._check_backlog()
            return b""
        return self._next_request()

    def _check_backlog(self) -> None:
        if len(self._buf) > self._limits.max_frame_size + self._limits.max_header_size:
            raise HttpError(400, "too many pipelined HTTP requests waiting")

    def _next_request(self) -> bytes:
        end = self._buf.find(_END_OF_HEAD)
        if end < 0:
            if len(self._buf) > self._limits.max_header_size:
                raise HttpError(400, "HTTP request head too large")
            return b""
        head = bytes(self._buf[:end]).decode("latin-1")
        del self._buf[: end + len(_END_OF_HEAD)]
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise HttpError(400, f"not an HTTP/1.x request line: {lines[0][:80]!r}")
        method, _, version = parts
        fields: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise HttpError(400, "malformed HTTP header line")
            fields[name.strip().lower()] = value.strip()
        if method != "POST":
            raise HttpError(405, f"HTTP {method[:16]!r}: Thrift over HTTP is POST only")
        if "chunked" in fields.get("transfer-encoding", "").lower():
            raise HttpError(411, "chunked HTTP bodies are not supported: send Content-Length")
        length_text = fields.get("content-length")
        if length_text is None or not length_text.isdigit():
            raise HttpError(411, "HTTP request without a Content-Length")
        length = int(length_text)
        if length > self._limits.max_frame_size:
            raise HttpError(
                413,
                f"HTTP body of {length} bytes exceeds max_frame_size {self._limits.max_frame_size}",
            )
        # Apache's C++ THttpClient sends a oneway call and never reads a response to it (its
        # THttpServer writes none); every other client (Python, Java, Node.js) waits for one.
        self._silent_oneway = "C++/THttpClient" in fields.get("user-agent", "")
        connection = fields.get("connection", "").lower()
        if version == "HTTP/1.0":
            self.keep_alive = "keep-alive" in connection
        else:
            self.keep_alive = "close" not in connection
        self._in_request = True
        self._left = length
        rest = bytes(self._buf)
        self._buf.clear()
        return self.unwrap(rest) if rest else b""

    def wrap(self, data: bytes) -> bytes:
        # Replies are collected into the response, which goes out once every call of the
        # request is answered (respond()).
        self._reply += data
        return b""

    def respond(self) -> bytes:
        """The response to the current request (its replies so far); ready for the next."""
        body = bytes(self._reply)
        self._reply.clear()
        self._in_request = False
        if not self.keep_alive:
            self.closing = True
        if not body and self._silent_oneway:
            return b""  # only oneway calls: this client reads no response
        return response(200, body, keep_alive=self.keep_alive, content_type="application/x-thrift")

    def has_next(self) -> bool:
        """Bytes of a next request are waiting (feed ``b""`` to read them)."""
        return bool(self._buf) and not self._in_request and not self.closing


def refusal(exc: HttpError) -> bytes:
    """The response refusing a request (the connection closes after it)."""
    body = f"{exc}\n".encode()
    return response(exc.status, body, keep_alive=False, content_type="text/plain")
