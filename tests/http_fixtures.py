"""Local HTTP peers on 127.0.0.1 for offline ingestion tests: recorded Yahoo chart payloads and real feed files.

yfinance's own HTTP and parsing code runs against these: a requests.Session subclass rewrites Yahoo's hosts to the
local server (yfinance copies its base URL at import, so patching its constants has no effect).
"""
from __future__ import annotations

import contextlib
import json
import threading
from email.utils import formatdate
from hashlib import sha1
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, urlsplit

import requests

YAHOO_HOSTS = ("query1.finance.yahoo.com", "query2.finance.yahoo.com", "fc.yahoo.com", "finance.yahoo.com",
               "guce.yahoo.com", "consent.yahoo.com", "feeds.finance.yahoo.com")


class LocalServer:
    """A threaded HTTP server on a free loopback port serving Yahoo's chart/cookie/crumb endpoints and files."""

    def __init__(self):
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path with query, request headers) in arrival order
        self.yahoo: dict[str, list[dict]] = {}  # ticker -> recorded exchanges
        self.yahoo_failures: dict[str, list[int]] = {}  # ticker -> HTTP statuses for its next chart requests
        self.files: dict[str, tuple[bytes, str]] = {}  # path -> (body, content type)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                server.requests.append((self.path, dict(self.headers)))
                status, headers, body = server.respond(self.path, self.headers)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # --- content ---------------------------------------------------------------------------------------

    def add_yahoo_recordings(self, folder: Path) -> None:
        """Serve every recorded `{request, response}` exchange in folder under its ticker."""
        for f in sorted(folder.glob("*.json")):
            exchange = json.loads(f.read_text())
            ticker = urlsplit(exchange["request"]["url"]).path.rsplit("/", 1)[-1].upper()
            self.yahoo.setdefault(ticker, []).append(exchange)

    def add_file(self, path: str, body: bytes, content_type: str = "application/xml") -> str:
        """Serve body at path with an ETag and a Last-Modified (so conditional GETs can be answered 304)."""
        self.files[path] = (body, content_type)
        return self.url + path

    def count(self, path_prefix: str) -> int:
        return sum(1 for p, _ in self.requests if p.startswith(path_prefix))

    # --- responses -------------------------------------------------------------------------------------

    def respond(self, path: str, headers) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(path)
        if parts.path in ("", "/"):  # fc.yahoo.com: Yahoo answers 404 but sets the consent cookie
            return 404, {"Set-Cookie": "A3=d=local; Max-Age=3600; Path=/"}, b""
        if parts.path == "/v1/test/getcrumb":
            return 200, {"Content-Type": "text/plain"}, b"localcrumb"
        if parts.path.startswith("/v8/finance/chart/"):
            return self._chart(parts.path.rsplit("/", 1)[-1].upper(), parse_qs(parts.query))
        if parts.path in self.files:
            body, content_type = self.files[parts.path]
            etag = '"' + sha1(body).hexdigest()[:16] + '"'
            last_modified = formatdate(1_600_000_000, usegmt=True)
            validators = {"ETag": etag, "Last-Modified": last_modified}
            if headers.get("If-None-Match") == etag or headers.get("If-Modified-Since") == last_modified:
                return 304, validators, b""
            return 200, {**validators, "Content-Type": content_type}, body
        return 404, {"Content-Type": "text/plain"}, b"not found"

    def _chart(self, ticker: str, query: dict[str, list[str]]):
        if self.yahoo_failures.get(ticker):
            return self.yahoo_failures[ticker].pop(0), {"Content-Type": "text/plain"}, b"Too Many Requests"
        recorded = self.yahoo.get(ticker)
        if not recorded:
            body = {"chart": {"result": None, "error": {"code": "Not Found",
                                                         "description": "No data found, symbol may be delisted"}}}
            return 404, {"Content-Type": "application/json"}, json.dumps(body).encode()
        # The recording whose period overlaps the requested one most (any for range=1d timezone look-ups).
        lo, hi = int(query.get("period1", [0])[0]), int(query.get("period2", [2**40])[0])

        def overlap(exchange):
            q = parse_qs(urlsplit(exchange["request"]["url"]).query)
            return min(hi, int(q["period2"][0])) - max(lo, int(q["period1"][0]))

        best = max(recorded, key=overlap)
        return 200, {"Content-Type": "application/json"}, json.dumps(best["response"]["bodyJson"]).encode()

    # --- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> "LocalServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextlib.contextmanager
def local_server() -> Iterator[LocalServer]:
    server = LocalServer().start()
    try:
        yield server
    finally:
        server.stop()


class YahooToLocalSession(requests.Session):
    """A requests session that sends every request for a Yahoo host to the local server instead."""

    def __init__(self, base_url: str):
        super().__init__()
        self.base_url = base_url
        # yfinance memoizes responses for past date ranges per process (an lru_cache on YfData.cache_get): without
        # clearing it, a second test asking for the same window gets the first test's answer and never reaches
        # this test's server.
        from yfinance.data import YfData

        YfData.cache_get.cache_clear()

    def request(self, method, url, *args, **kwargs):
        parts = urlsplit(url)
        if parts.hostname in YAHOO_HOSTS:
            url = self.base_url + (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return super().request(method, url, *args, **kwargs)

