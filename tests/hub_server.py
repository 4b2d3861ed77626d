"""A model hub on 127.0.0.1 serving one directory as one repository at one commit, with the
two requests huggingface_hub makes to download a pinned revision: the tree listing
(``/api/models/{name}/tree/{commit}``) and each file's ``resolve`` URL (HEAD for its commit,
etag and size, GET for its bytes). Point HF_ENDPOINT at `url` and a download runs as it
would against the real hub, without a network."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


class LocalHub:
    """Serves `directory` as hub repository `name` at `commit` until stopped; `requests`
    counts the files it sent (GET of a resolve URL), by path."""

    def __init__(self, name: str, commit: str, directory: Path):
        self.name, self.commit, self.directory = name, commit, Path(directory)
        self.requests: dict[str, int] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> LocalHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def files(self) -> list[Path]:
        return sorted(path for path in self.directory.rglob("*") if path.is_file())

    def _tree(self) -> bytes:
        entries = [
            {
                "type": "file",
                "path": path.relative_to(self.directory).as_posix(),
                "size": path.stat().st_size,
                "oid": hashlib.sha1(path.read_bytes()).hexdigest(),
            }
            for path in self.files()
        ]
        return json.dumps(entries).encode()

    def _handler(self):
        hub = self
        tree_path = f"/api/models/{hub.name}/tree/{hub.commit}"
        resolve_prefix = f"/{hub.name}/resolve/{hub.commit}/"

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # the test's output stays the test's
                pass

            def _answer(self, send_body: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                if path.rstrip("/") == tree_path:
                    body, headers = hub._tree(), {"Content-Type": "application/json"}
                elif path.startswith(resolve_prefix) and (hub.directory / path[len(resolve_prefix) :]).is_file():
                    relative = path[len(resolve_prefix) :]
                    body = (hub.directory / relative).read_bytes()
                    headers = {"X-Repo-Commit": hub.commit, "ETag": f'"{hashlib.sha256(body).hexdigest()}"'}
                    if send_body:
                        hub.requests[relative] = hub.requests.get(relative, 0) + 1
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                for key, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(key, value)
                self.end_headers()
                if send_body:
                    self.wfile.write(body)

            def do_HEAD(self) -> None:
                self._answer(send_body=False)

            def do_GET(self) -> None:
                self._answer(send_body=True)

        return Handler
