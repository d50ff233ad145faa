"""``hespotex view``: a run's results served to a browser on this machine.

A local server for one user: it binds to 127.0.0.1 unless told otherwise, answers GET and HEAD
only, and serves nothing but the routes below — the viewer's own pages and scripts,
OpenSeadragon's files, and per slide of the sample sheet its thumbnail, Deep Zoom tiles and
results as JSON. Slide ids are looked up in the sheet and file names matched against a strict
pattern before any file is opened, and a static file must resolve inside its folder, so no
request reaches a file by a path of its own; nothing from a request is ever run.

    /                                     the cohort page
    /slide/{id}                           a slide's page
    /api/cohort                           every slide of the sheet, its status and QC counts
    /api/slides/{id}                      its size, genes and their validation scores
    /api/slides/{id}/spots?gene=G         spot centres, QC, and G's values
    /api/slides/{id}/dropped              spots quality control dropped, with reasons
    /api/slides/{id}/outline              the tissue outline
    /api/slides/{id}/thumbnail.png        its thumbnail
    /tiles/{id}.dzi, /tiles/{id}_files/{level}/{column}_{row}.jpeg
                                          Deep Zoom, from the slide through the project's readers
    /static/{file}, /static/openseadragon/{file}
"""

from __future__ import annotations

import json
import logging
import mimetypes
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from hespotex.config import PipelineConfig
from hespotex.errors import ConfigError
from hespotex.viewer.results import Results, UnknownError

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
# Where `make viewer-assets` (npm, from envs/viewer-assets/package.json) puts OpenSeadragon.
OPENSEADRAGON_BUILD = Path("node_modules") / "openseadragon" / "build" / "openseadragon"
DEFAULT_ASSETS = Path(__file__).parents[2] / "envs" / "viewer-assets"
LOCALHOST = "127.0.0.1"

SLIDE_ID = r"(?P<slide>[A-Za-z0-9][A-Za-z0-9._-]{0,127})"
# Each segment starts with a letter, digit, '-' or '_': no '..', no hidden files.
STATIC_FILE = r"(?P<file>[A-Za-z0-9_-][A-Za-z0-9_.-]*(?:/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*)"
TILE = r"(?P<level>\d{1,2})/(?P<column>\d{1,6})_(?P<row>\d{1,6})"
ROUTES = [
    (re.compile(pattern), name)
    for pattern, name in (
        (r"/", "cohort_page"),
        (rf"/slide/{SLIDE_ID}", "slide_page"),
        (r"/api/cohort", "cohort"),
        (rf"/api/slides/{SLIDE_ID}", "slide_info"),
        (rf"/api/slides/{SLIDE_ID}/spots", "spots"),
        (rf"/api/slides/{SLIDE_ID}/dropped", "dropped"),
        (rf"/api/slides/{SLIDE_ID}/outline", "outline"),
        (rf"/api/slides/{SLIDE_ID}/thumbnail\.png", "thumbnail"),
        (rf"/tiles/{SLIDE_ID}\.dzi", "dzi"),
        (rf"/tiles/{SLIDE_ID}_files/{TILE}\.jpeg", "tile"),
        (rf"/static/openseadragon/{STATIC_FILE}", "openseadragon"),
        (rf"/static/{STATIC_FILE}", "static"),
    )
]


def route(path: str) -> tuple[str, re.Match] | None:
    """The route ``path`` matches whole, and the match; None for any other path (the path is
    matched as sent, percent-escapes and all)."""
    for pattern, name in ROUTES:
        match = pattern.fullmatch(path)
        if match:
            return name, match
    return None


def openseadragon_folder(assets: Path | None) -> Path:
    """OpenSeadragon's build folder under ``assets`` (default: the checkout's
    ``envs/viewer-assets``), or a ConfigError saying how to install it."""
    folder = Path(assets or DEFAULT_ASSETS) / OPENSEADRAGON_BUILD
    if not (folder / "openseadragon.min.js").is_file():
        raise ConfigError(
            f"{folder}: OpenSeadragon is not installed; run `make viewer-assets` (npm install "
            "in envs/viewer-assets) or give --assets, a folder holding its node_modules"
        )
    return folder


class ViewerServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], results: Results, openseadragon: Path):
        super().__init__(address, ViewerRequestHandler)
        self.results = results
        self.openseadragon = openseadragon


class ViewerRequestHandler(BaseHTTPRequestHandler):
    server: ViewerServer
    server_version = "hespotex-view"

    def log_message(self, format: str, *args) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def _answer(self, send_body: bool) -> None:
        if not self._host_is_allowed():
            self._send_error(HTTPStatus.FORBIDDEN, "unknown Host", send_body)
            return
        url = urlsplit(self.path)
        found = route(url.path)
        if found is None:
            self._send_error(HTTPStatus.NOT_FOUND, f"no such page: {url.path}", send_body)
            return
        name, match = found
        try:
            status, content_type, body = getattr(self, f"_{name}")(match, parse_qs(url.query))
        except UnknownError as error:
            self._send_error(HTTPStatus.NOT_FOUND, str(error), send_body)
            return
        except Exception:  # one bad request must not end the server
            logger.exception("%s failed", url.path)
            self._send_error(
                HTTPStatus.INTERNAL_SERVER_ERROR, "server error (see its log)", send_body
            )
            return
        self._send(status, content_type, body, send_body)

    def _host_is_allowed(self) -> bool:
        """On this machine only, a request must name this machine: a page elsewhere that
        points its own name at 127.0.0.1 (DNS rebinding) is refused."""
        if self.server.server_address[0] != LOCALHOST:
            return True
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        return host in ("127.0.0.1", "localhost")

    def _send(self, status: HTTPStatus, content_type: str, body: bytes, send_body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _send_error(self, status: HTTPStatus, message: str, send_body: bool) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(status, "application/json", body, send_body)

    @staticmethod
    def _json(value) -> tuple[HTTPStatus, str, bytes]:
        # NaN is no JSON a browser parses: the results give None for a missing number.
        return HTTPStatus.OK, "application/json", json.dumps(value, allow_nan=False).encode()

    @staticmethod
    def _file(folder: Path, name: str) -> tuple[HTTPStatus, str, bytes]:
        root = folder.resolve()
        path = (root / name).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise UnknownError(f"no such file: {name}")
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return HTTPStatus.OK, content_type, path.read_bytes()

    def _cohort_page(self, match, query):
        return self._file(STATIC, "cohort.html")

    def _slide_page(self, match, query):
        self.server.results.thumbnail(match["slide"])  # an unknown slide is a 404
        return self._file(STATIC, "slide.html")

    def _cohort(self, match, query):
        return self._json(self.server.results.cohort())

    def _slide_info(self, match, query):
        return self._json(self.server.results.slide_info(match["slide"]))

    def _spots(self, match, query):
        results = self.server.results
        genes = query.get("gene") or [results.slide_info(match["slide"])["default_gene"]]
        return self._json(results.spots(match["slide"], genes[0]))

    def _dropped(self, match, query):
        return self._json(self.server.results.dropped(match["slide"]))

    def _outline(self, match, query):
        return self._json(self.server.results.outline(match["slide"]))

    def _thumbnail(self, match, query):
        path = self.server.results.thumbnail(match["slide"])
        return self._file(path.parent, path.name)

    def _dzi(self, match, query):
        dzi = self.server.results.tiles(match["slide"]).dzi()
        return HTTPStatus.OK, "application/xml", dzi.encode()

    def _tile(self, match, query):
        source = self.server.results.tiles(match["slide"])
        level, column, row = int(match["level"]), int(match["column"]), int(match["row"])
        if not source.has_tile(level, column, row):
            raise UnknownError(f"no tile {level}/{column}_{row} of {match['slide']}")
        return HTTPStatus.OK, "image/jpeg", source.tile(level, column, row)

    def _openseadragon(self, match, query):
        return self._file(self.server.openseadragon, match["file"])

    def _static(self, match, query):
        return self._file(STATIC, match["file"])


def serve(
    config: PipelineConfig, host: str = LOCALHOST, port: int = 8765, assets: Path | None = None
) -> ViewerServer:
    """A server for ``config``'s results, bound and ready (``serve_forever`` runs it)."""
    server = ViewerServer((host, port), Results(config), openseadragon_folder(assets))
    if host != LOCALHOST:
        logger.warning(
            "serving on %s: anyone who can reach this machine's port %d sees the results",
            host,
            server.server_address[1],
        )
    return server
