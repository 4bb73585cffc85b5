"""The viewer's HTTP server (standard library ``ThreadingHTTPServer``).

It answers a fixed set of routes and nothing else: the packaged page and OpenSeadragon files
(a whitelist made from the package at start), Deep Zoom descriptors and tiles of the slides it
was given, overlay tiles rendered from their output folders, the page's figures as JSON, and
a few named files of those folders. No route maps a request onto a file path, so no request
can reach a file it was not given; ``..``, absolute paths and odd characters are refused (400)
before any route is matched, unknown levels and tiles outside the slide are 404.
"""

from __future__ import annotations

import errno
import html
import ipaddress
import json
import re
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import unquote

from wsipipe.errors import InvalidInputError, OutputError
from wsipipe.view import DEFAULT_HOST, DEFAULT_PORT
from wsipipe.view.deepzoom import LRUCache, encode_png
from wsipipe.view.sources import CACHE_BYTES, ViewSource

#: Types of the packaged assets, by suffix (anything else in the folder is not served).
ASSET_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
}
# Everything the page needs comes from this server; nothing else may be fetched or run.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",  # another site's page cannot load tiles as images
}
#: How long closing waits for the read-ahead thread before leaving the slides open to it.
WARM_UP_JOIN_S = 5.0
# Whole-string patterns (fullmatch: "$" would also match before a final newline).
_SAFE_PATH = re.compile(r"(/[A-Za-z0-9_.\-]+)*/?")
_SLIDE = re.compile(r"/s/(\d{1,6})/(.*)", re.DOTALL)
_TILE = re.compile(r"(slide|overlay/([a-z]+))_files/(\d{1,2})/(\d{1,7})_(\d{1,7})\.(jpeg|png)")
_DZI = re.compile(r"(slide|overlay/([a-z]+))\.dzi")


def packaged_assets() -> dict[str, Path]:
    """Name ("view.js", "images/home_rest.png", ...) -> file, for every packaged viewer file."""
    root = Path(str(resources.files("wsipipe") / "resources" / "view"))
    return {
        path.relative_to(root).as_posix(): path
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_symlink() and path.suffix in ASSET_TYPES
    }


class ViewServer(ThreadingHTTPServer):
    """Serves ``sources`` (one slide, one output folder or a batch's slides)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], sources: list[ViewSource], mode: str, cache_bytes: int = CACHE_BYTES):
        self.sources = sources
        self.mode = mode
        self.cache = LRUCache(cache_bytes)
        self.assets = packaged_assets()
        self.warm_up: threading.Thread | None = None  # reading ahead (``open_view``); joined at close
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, ViewHandler)

    def handle_error(self, request, client_address) -> None:
        """A browser drops tile requests it no longer needs while panning: not worth a traceback."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), self.server_address[1]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    def close(self) -> None:
        """Stop listening and close the slides; a read-ahead still stuck after ``WARM_UP_JOIN_S``
        (a hung file system) keeps them open rather than have a slide closed under its reader."""
        self.server_close()
        if self.warm_up is not None:
            self.warm_up.join(WARM_UP_JOIN_S)
            if self.warm_up.is_alive():
                return
        for source in self.sources:
            source.close()


class ViewHandler(BaseHTTPRequestHandler):
    server: ViewServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes; with Nagle's algorithm the second waits for the
    # client's delayed ACK (~40 ms a tile on a keep-alive connection).
    disable_nagle_algorithm = True
    # A connection silent this long (s) is closed, so idle clients do not hold a thread each for ever.
    timeout = 120

    def log_message(self, format, *args):  # the base class's name and signature
        """Quiet: a page load makes hundreds of tile requests."""

    def do_HEAD(self):  # http.server's naming
        self._answer(head=True)

    def do_GET(self):
        self._answer(head=False)

    def _answer(self, head: bool) -> None:
        try:
            status, kind, body = self._route()
        except Exception as exc:  # a bug or an unreadable file: one line to the page, the server goes on
            status, kind, body = (
                HTTPStatus.INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                f"{type(exc).__name__}: {exc}".encode(),
            )
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store" if status != HTTPStatus.OK else "private, max-age=600")
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, status: HTTPStatus, why: str):
        return status, "text/plain; charset=utf-8", f"{status.value} {status.phrase}: {why}\n".encode()

    def _route(self):
        if not self._host_allowed():
            return self._error(HTTPStatus.FORBIDDEN, "unexpected Host header")
        # Not urlsplit: it would read "//host/..." as a host name.
        path = unquote(self.path.split("?", 1)[0])
        if (
            not path.startswith("/")
            or path.startswith("//")
            or not _SAFE_PATH.fullmatch(path)
            or any(part in (".", "..") for part in path.split("/"))
        ):
            return self._error(HTTPStatus.BAD_REQUEST, "not a path this server answers")
        if path == "/":
            return self._home()
        if path.startswith("/static/"):
            asset = self.server.assets.get(path.removeprefix("/static/"))
            if asset is None:
                return self._error(HTTPStatus.NOT_FOUND, "no such file")
            return HTTPStatus.OK, ASSET_TYPES[asset.suffix], asset.read_bytes()
        match = _SLIDE.fullmatch(path)
        if match is None or int(match.group(1)) >= len(self.server.sources):
            return self._error(HTTPStatus.NOT_FOUND, "no such page")
        return self._slide_route(self.server.sources[int(match.group(1))], match.group(2))

    def _host_allowed(self) -> bool:
        """On a loopback address, only loopback Host names (a web page elsewhere cannot rebind a
        name of its own onto this server)."""
        if not _loopback(str(self.server.server_address[0])):
            return True
        host = (self.headers.get("Host") or "").strip().lower()
        if host.startswith("["):  # [IPv6]:port
            if "]" not in host:
                return False
            host = host[1 : host.find("]")]
        elif host.count(":") == 1:
            host = host.split(":")[0]
        return host == "" or _loopback(host)

    def _home(self):
        if self.server.mode != "batch":
            return HTTPStatus.OK, "text/html; charset=utf-8", _redirect_page("/s/0/")
        return HTTPStatus.OK, "text/html; charset=utf-8", batch_page(self.server.sources)

    def _slide_route(self, source: ViewSource, rest: str):
        if rest == "":
            return HTTPStatus.OK, ASSET_TYPES[".html"], self.server.assets["index.html"].read_bytes()
        tiles = source.tiles(self.server.cache)
        if rest == "info.json":
            return HTTPStatus.OK, "application/json", json.dumps(source.page_info(), allow_nan=False).encode()
        if rest.startswith("files/"):
            file = source.output_file(rest.removeprefix("files/"))
            if file is None:
                return self._error(HTTPStatus.NOT_FOUND, "not a file this server serves")
            return HTTPStatus.OK, "application/json", file.read_bytes()
        dzi = _DZI.fullmatch(rest)
        if dzi is not None:
            overlay = dzi.group(2)
            if overlay is not None and overlay not in source.overlays:
                return self._error(HTTPStatus.NOT_FOUND, "no such overlay")
            return HTTPStatus.OK, "application/xml", tiles.grid.dzi("png" if overlay else "jpeg").encode()
        tile = _TILE.fullmatch(rest)
        if tile is None:
            return self._error(HTTPStatus.NOT_FOUND, "no such page")
        overlay, fmt = tile.group(2), tile.group(6)
        level, col, row = int(tile.group(3)), int(tile.group(4)), int(tile.group(5))
        if overlay is None:
            data = tiles.tile(level, col, row) if fmt == "jpeg" else None
            if data is None:
                return self._error(HTTPStatus.NOT_FOUND, "no such tile")
            return HTTPStatus.OK, "image/jpeg", data
        box = tiles.grid.box(level, col, row)
        if fmt != "png" or overlay not in source.overlays or box is None:
            return self._error(HTTPStatus.NOT_FOUND, "no such tile")
        key = (id(source), overlay, level, col, row)
        data = self.server.cache.get(key)
        if data is None:
            rgba = source.render_overlay(overlay, box)
            if rgba is None:
                return self._error(HTTPStatus.NOT_FOUND, "no such tile")
            data = encode_png(rgba)
            self.server.cache.put(key, data)
        return HTTPStatus.OK, "image/png", data


def _redirect_page(target: str) -> bytes:
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="0; url={target}">'
        f'<link rel="icon" href="data:,"><title>wsipipe view</title></head><body><a href="{target}">open the viewer</a></body></html>'
    ).encode()


def batch_page(sources: list[ViewSource]) -> bytes:
    """The slide list of a batch: each slide's figures, linking to its view."""
    from wsipipe.batch.summary import figure_columns

    columns = figure_columns(sources)
    head = "".join(f"<th>{html.escape(c.replace('_', ' '))}</th>" for c in ["slide", *columns])
    rows = []
    for index, source in enumerate(sources):
        cells = "".join(f"<td>{html.escape(_text(source.figures.get(c)))}</td>" for c in columns)
        rows.append(f'<tr><td><a href="/s/{index}/">{html.escape(source.name)}</a></td>{cells}</tr>')
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>wsipipe view: batch</title><link rel="icon" href="data:,">'
        '<link rel="stylesheet" href="/static/view.css"></head><body class="list">'
        f"<h1>Slides of the batch ({len(sources)})</h1><table><thead><tr>{head}</tr></thead><tbody>"
        + "".join(rows)
        + '</tbody></table><p class="note">For research use only: not for diagnosis.</p></body></html>'
    ).encode()


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _text(value) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def start_server(
    sources: list[ViewSource], mode: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT
) -> ViewServer:
    """A bound server (not yet serving); port 0 picks a free one."""
    if not 0 <= port <= 65535:
        raise InvalidInputError(f"{{port}} {port}: choose 0 to 65535", parameter="port")
    if not host.strip():  # the socket would take "" for every interface
        raise InvalidInputError(
            "{host} is empty: give an address (0.0.0.0 serves every interface, on purpose only)", parameter="host"
        )
    try:
        return ViewServer((host, port), sources, mode)
    except OSError as exc:
        busy = exc.errno in (errno.EADDRINUSE, errno.EACCES)
        raise OutputError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
            + ("choose another {port}" if busy else "give an address of this machine as {host}"),
            parameter="port" if busy else "host",
        ) from exc
