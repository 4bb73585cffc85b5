"""``wsipipe view``: a slide and its results, zoomable, in the browser.

``open_view`` works out what PATH is (``sources``), opens the slide when there is one, and
binds the HTTP server (``server``); Deep Zoom tiles come from ``deepzoom`` and overlay tiles
from ``overlays``, both rendered on request and cached.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wsipipe.view.server import ViewServer

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "open_view"]

# Here, not in ``server``: the CLI reads them for --help without loading OpenCV (0.1 s per command).
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8642


def open_view(
    path: str | Path,
    *,
    slide: str | Path | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    mpp_override: float | None = None,
) -> ViewServer:
    """A bound server for PATH (a slide, an output folder or a batch output folder); call
    ``serve_forever`` on it and ``close`` after. A single slide is opened here, so a slide that
    cannot be read fails before anything listens."""
    from wsipipe.view.server import start_server
    from wsipipe.view.sources import sources_for

    mode, sources = sources_for(Path(path), Path(slide) if slide is not None else None, mpp_override)
    server = start_server(sources, mode, host, port)
    if mode != "batch":
        try:
            sources[0].tiles(server.cache)
        except BaseException:
            server.close()
            raise
        server.warm_up = threading.Thread(target=sources[0].warm_up, name="view-warm-up", daemon=True)
        server.warm_up.start()
    return server
