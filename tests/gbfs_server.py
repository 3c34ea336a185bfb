"""A GBFS feed over HTTP for the tests: a tiny http.server in a thread that serves files set by the test, with
an ETag or a Last-Modified, answering conditional GETs with 304 and counting what it answered."""

import hashlib
import json
import threading
from collections import Counter
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

Validator = Literal["etag", "last-modified"]


class GbfsServer:
    def __init__(self, validator: Validator = "etag") -> None:
        self.validator = validator
        self.files: dict[str, bytes] = {}
        self._modified: dict[str, str] = {}
        self._clock = 1_700_000_000
        self.answered: Counter[tuple[str, int]] = Counter()  # (file name, status)
        self.conditional: Counter[str] = Counter()  # requests that carried a validator, by file
        self.failing = False  # answer 503 to everything
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/gbfs.json"

    def __enter__(self) -> "GbfsServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def put(self, name: str, document: Any) -> None:
        """Serve ``document`` as ``<name>.json`` from now on (a new Last-Modified when it changed)."""
        body = json.dumps(document).encode()
        with self._lock:
            if self.files.get(name) != body:
                self._clock += 10
                self._modified[name] = formatdate(self._clock, usegmt=True)
            self.files[name] = body

    def put_folder(self, folder: Path, ttl: int | None = None) -> None:
        """The folder's GBFS files, and a gbfs.json (v2.3 shape) naming them at this server."""
        names = [p.stem for p in sorted(folder.glob("*.json")) if p.stem != "gbfs"]
        for name in names:
            document = json.loads((folder / f"{name}.json").read_text())
            if ttl is not None:
                document["ttl"] = ttl
            self.put(name, document)
        base = self.url.rsplit("/", 1)[0]
        feeds = [{"name": name, "url": f"{base}/{name}.json"} for name in names]
        self.put("gbfs", {"ttl": ttl or 0, "version": "2.3", "data": {"en": {"feeds": feeds}}})

    def count(self, name: str, status: int) -> int:
        with self._lock:
            return self.answered[(name, status)]

    def _answer(self, request: BaseHTTPRequestHandler) -> None:
        name = request.path.lstrip("/").removesuffix(".json")
        with self._lock:
            body = self.files.get(name)
            modified = self._modified.get(name)
            if self.failing or body is None:
                status = 503 if self.failing else 404
                self.answered[(name, status)] += 1
                request.send_response(status)
                request.send_header("Content-Length", "0")
                request.end_headers()
                return
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            if self.validator == "etag":
                asked = request.headers.get("If-None-Match")
                headers = {"ETag": etag}
            else:
                asked = request.headers.get("If-Modified-Since")
                headers = {"Last-Modified": modified or ""}
            if asked is not None:
                self.conditional[name] += 1
            unchanged = asked == (etag if self.validator == "etag" else modified)
            status = 304 if unchanged else 200
            self.answered[(name, status)] += 1
        request.send_response(status)
        for key, value in headers.items():
            request.send_header(key, value)
        if status == 304:
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)
