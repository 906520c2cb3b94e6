"""The supervisor's HTTP scope mapped to the request a server would have received: one
mapping for both kinds of program.

The supervisor sends aiohttp's view of the request: the path and query string already
decoded (every escape of the path resolved; in the query `+` as a space, every escape
resolved except those of `+ & = ;` and those that are not UTF-8), lower-case header
names, the body inside the scope.
`request_from_scope()` turns it into a `Request`: the method, the decoded path, and the
bytes a client would have sent (`raw_path`, `query_string`, the header pairs).
An ASGI app gets them in its scope (`asgi.asgi_scope`); an executable's server gets the
same bytes in its request line and header block (`executable.request_head`), so both see
the same request. A scope no supervisor sends (a field of the wrong type, a method that
is not an HTTP token) raises ScopeError: the init's failure, not the program's.
"""

from __future__ import annotations

from urllib.parse import quote

from aleph_runtime.guest.config import HEX_DIGITS


class ScopeError(ValueError):
    """The supervisor's scope cannot be mapped to a request (a field of the wrong type):
    the init's failure, not the program's."""


#: The characters of an HTTP token (RFC 9110): what a method or a header name may hold.
TOKEN_CHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")

#: The delimiters yarl leaves percent-encoded in the query string it decodes (its `QS`),
#: so that `a=x%26y` still means one field: their escapes must stay escapes.
_KEPT_QUERY_ESCAPES = frozenset(b"+&=;")
#: What a browser leaves as is in a query (WHATWG's query percent-encode set is the
#: complement), less `%` and `+`, which would change what the string parses to.
_QUERY_PLAIN = frozenset(chr(c) for c in range(0x21, 0x7F)) - set('"#%+<>')
#: Likewise for a path: `?` and `#` would end it, and the backtick and braces too.
_PATH_PLAIN = _QUERY_PLAIN - set("?`{}") | {"+"}
#: The same sets as `safe` arguments of urllib.parse.quote, which keeps letters, digits
#: and `_.-~` too (all plain in both). quote() rather than a regular expression: the two
#: character classes cost more to compile, at every start, than the rest of the module.
_QUERY_SAFE = "".join(sorted(_QUERY_PLAIN))
_PATH_SAFE = "".join(sorted(_PATH_PLAIN))
#: The bytes a query string given as bytes may keep: the plain ones and `%` (its escapes
#: are already escapes); any other byte could end the request line or the query.
_RAW_QUERY_PLAIN = frozenset(_QUERY_SAFE.encode("ascii")) | {ord("%"), ord("+")}

#: Replaces the client's Accept-Encoding (see `request_headers`).
IDENTITY = b"identity"


class Request:
    """One HTTP request as a server received it, from the supervisor's scope.

    `path` is the decoded path (ASGI's `path`); `raw_path` and `query_string` are the
    ASCII bytes of the request target (`raw_path` + `?` + `query_string` when there is
    a query); `headers` are (lower-case name, value) tuples of bytes.
    """

    __slots__ = ("body", "headers", "method", "path", "query_string", "raw_path")

    def __init__(
        self,
        method: str,
        path: str,
        raw_path: bytes,
        query_string: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ):
        self.method = method
        self.path = path
        self.raw_path = raw_path
        self.query_string = query_string
        self.headers = headers
        self.body = body

    @property
    def target(self) -> bytes:
        """The request target of the request line: the raw path and the query, if any."""
        return self.raw_path + b"?" + self.query_string if self.query_string else self.raw_path


def request_from_scope(scope: dict) -> Request:
    """The request the supervisor's HTTP scope stands for; ScopeError for a field of a
    type no supervisor sends."""
    path = scope.get("path") or "/"
    if not isinstance(path, str):
        raise ScopeError(f"the supervisor's scope has a path that is {type(path).__name__}, not str")
    if not path.startswith("/"):
        path = "/" + path  # a server's path always starts with one; aleph-vm adds it too
    method = scope.get("method") or "GET"
    if not isinstance(method, str) or not method.isascii() or not set(method.encode()) <= TOKEN_CHARS:
        raise ScopeError(f"the supervisor's scope has a method that is not an HTTP token: {method!r:.60}")
    return Request(
        method.upper(),
        path,
        raw_path_bytes(path),
        query_bytes(scope.get("query_string")),
        request_headers(scope.get("headers") or ()),
        as_bytes(scope.get("body") or b"", "the supervisor's scope has a body that"),
    )


def as_bytes(value: object, what: str, error: type[Exception] = ScopeError) -> bytes:
    """`value` as bytes; text as latin-1 (HTTP's header charset), else UTF-8."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        # Header values are latin-1 on the wire; anything else arrived as text and goes
        # out as UTF-8 rather than failing the call.
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogatepass")
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise error(f"{what} is {type(value).__name__}, not bytes")


def _percent_encode(text: str, safe: str) -> bytes:
    """`text` with every character outside `safe` percent-encoded as its UTF-8 bytes
    (surrogates from undecodable input included); ASCII only."""
    return quote(text, safe=safe, errors="surrogatepass").encode("ascii")


def query_bytes(query: object) -> bytes:
    """The query string as a client sent it, from the supervisor's decoded one.

    The supervisor sends aiohttp's `request.query_string`: yarl has turned `+` into a
    space and resolved every escape except those of the delimiters `+&=;` and those that
    are not UTF-8 (`%FF`), which it keeps as they came. Re-encoded as UTF-8 with those
    escapes kept and every other `%` escaped, the string parses (`parse_qsl`, Django's
    QueryDict...) to exactly the values the supervisor's own parsing gives. Bytes are
    taken as a client's, with any byte that may not appear in a query escaped. Never
    raises; the result is ASCII without space, `#` or control characters.
    """
    if isinstance(query, (bytes, bytearray, memoryview)):
        raw = bytes(query)
        if _RAW_QUERY_PLAIN.issuperset(raw):
            return raw  # already what a client sent
        return b"".join(bytes((byte,)) if byte in _RAW_QUERY_PLAIN else b"%%%02X" % byte for byte in raw)
    if not isinstance(query, str) or not query:
        return b""
    out = bytearray()
    plain_run_start = 0
    position = query.find("%")
    while position != -1:
        out += _percent_encode(query[plain_run_start:position], _QUERY_SAFE)
        digits = query[position + 1 : position + 3]
        if len(digits) == 2 and digits[0] in HEX_DIGITS and digits[1] in HEX_DIGITS:
            byte = int(digits, 16)
            if byte in _KEPT_QUERY_ESCAPES or byte >= 0x80:
                out += b"%" + digits.upper().encode("ascii")
                plain_run_start = position + 3
                position = query.find("%", plain_run_start)
                continue
        out += b"%25"  # a literal percent sign (the client's `%25`)
        plain_run_start = position + 1
        position = query.find("%", plain_run_start)
    out += _percent_encode(query[plain_run_start:], _QUERY_SAFE)
    return bytes(out)


def raw_path_bytes(path: str) -> bytes:
    """The path as a server receives it: the decoded path percent-encoded as UTF-8, ASCII only.

    The supervisor resolved every escape, `%2F` included, so `/a%2Fb` comes back as `/a/b`.
    """
    return _percent_encode(path, _PATH_SAFE)


def request_headers(raw_headers: object) -> list[tuple[bytes, bytes]]:
    """The supervisor's header pairs as a server's: (lower-case name, value) tuples of bytes.

    A pair no HTTP parser would have let through (a name that is not a token, a value
    holding CR, LF or NUL) is dropped: it could end the header block an executable's
    server reads. Accept-Encoding becomes `identity`.
    """
    if not isinstance(raw_headers, (list, tuple)):
        raise ScopeError(
            f"the supervisor's scope has headers that are {type(raw_headers).__name__}, not a list"
        )
    headers = []
    for pair in raw_headers:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ScopeError("the supervisor's scope has a header that is not a (name, value) pair")
        name, value = pair
        if type(name) is not bytes:
            name = as_bytes(name, "the supervisor's scope has a header name that")
        if type(value) is not bytes:
            value = as_bytes(value, "the supervisor's scope has a header value that")
        if not name or not TOKEN_CHARS.issuperset(name) or b"\r" in value or b"\n" in value or b"\0" in value:
            continue
        name = name.lower()
        if name == b"accept-encoding":
            # The supervisor drops the answer's Content-Encoding but keeps its body: a
            # compressed body would reach the client as binary. Saying the client only
            # takes `identity` makes compression middleware (GZipMiddleware...) leave
            # the body alone, which also spares the VM compressing what nobody decodes.
            value = IDENTITY
        # Tuples, as a server gives them: msgpack made them lists, and some frameworks
        # (BlackSheep) refuse anything else.
        headers.append((name, value))
    return headers
