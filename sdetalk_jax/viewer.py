"""A local web server for the glTF viewer page (`viewer/`, three.js):

    make viewer-setup                               # once: three.js, the validator, Chromium
    python -m sdetalk_jax.viewer --folder out/      # prints a link per .glb; Ctrl-C stops it

It serves the page and its node_modules at / and the export folder at /files/, on localhost only,
so the page loads `?model=files/STEM_s0.glb` and the audio saved beside it from the same origin.

`serve_live` serves the live page (`live.html`) for `python -m sdetalk_jax.stream --serve PORT`:
the mesh at /live/mesh.json and the stream's frames as server-sent events at /live/events.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import queue
import sys
import threading
import time
import urllib.parse

from sdetalk_jax import cli

VIEWER_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "viewer")
FILES = "/files/"


class ViewerError(RuntimeError):
    """The viewer page or its three.js is not installed, or the folder to serve is missing."""


def check_installed(viewer_dir: str = VIEWER_DIR) -> None:
    three = os.path.join(viewer_dir, "node_modules", "three", "build", "three.module.js")
    if not os.path.exists(three):
        raise ViewerError(
            f"{three} is missing: install the viewer's packages with `make viewer-setup` "
            "(npm install in viewer/)"
        )


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".glb": "model/gltf-binary",
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".wav": "audio/wav",
    }

    def __init__(self, *args, files_dir: str, **kwargs):
        self.files_dir = files_dir
        super().__init__(*args, **kwargs)

    def translate_path(self, path: str) -> str:
        if path.startswith(FILES):
            relative = urllib.parse.unquote(path[len(FILES) :].split("?", 1)[0].split("#", 1)[0])
            root = os.path.realpath(self.files_dir)
            target = os.path.realpath(os.path.join(root, *relative.split("/")))
            # nothing outside the export folder
            return target if target.startswith(root + os.sep) else os.path.join(root, ".missing")
        return super().translate_path(path)

    def log_message(self, format, *args):  # quiet: the tests and the CLI print what matters
        pass


def serve(folder: str, port: int = 0, viewer_dir: str = VIEWER_DIR):
    """Starts the server on 127.0.0.1 in a background thread; returns it (`server_address` holds
    the port; call `shutdown()` to stop)."""
    check_installed(viewer_dir)
    if not os.path.isdir(folder):
        raise ViewerError(f"{folder}: no such folder to serve")
    handler = functools.partial(_Handler, directory=viewer_dir, files_dir=folder)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class FrameChannel:
    """The stream's frames (JSON strings) handed to every live page connected, each through its
    own queue; `close` ends every page's event stream."""

    def __init__(self):
        self._lock = threading.Lock()
        self._queues: list[queue.Queue] = []
        self.connected = threading.Event()

    def subscribe(self) -> queue.Queue:
        with self._lock:
            self._queues.append(queue.Queue())
            self.connected.set()
            return self._queues[-1]

    def unsubscribe(self, messages: queue.Queue) -> None:
        with self._lock:
            self._queues.remove(messages)

    def publish(self, message: str | None) -> None:
        with self._lock:
            for messages in self._queues:
                messages.put(message)

    def close(self, timeout_s: float = 5.0) -> None:
        """Ends every page's event stream, waiting up to `timeout_s` for the pages to be sent
        what is queued."""
        self.publish(None)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self._queues:
                    return
            time.sleep(0.02)


class _LiveHandler(_Handler):
    def __init__(self, *args, mesh: dict, channel: FrameChannel, **kwargs):
        self.mesh, self.channel = mesh, channel  # before the base class handles the request
        super().__init__(*args, **kwargs)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/live/mesh.json":
            body = json.dumps(self.mesh).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif path == "/live/events":
            self._events()
        else:
            super().do_GET()

    def _events(self) -> None:
        """Server-sent events: one `data:` message per frame, then an `end` event."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        messages = self.channel.subscribe()
        try:
            while (message := messages.get()) is not None:
                self.wfile.write(f"data: {message}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(b"event: end\ndata: {}\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page was closed
        finally:
            self.channel.unsubscribe(messages)


def serve_live(mesh: dict, channel: FrameChannel, port: int = 0, viewer_dir: str = VIEWER_DIR):
    """Starts the live page's server on 127.0.0.1 in a background thread; returns it."""
    check_installed(viewer_dir)
    handler = functools.partial(
        _LiveHandler, directory=viewer_dir, files_dir=viewer_dir, mesh=mesh, channel=channel
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def page_url(server, glb_name: str, **query) -> str:
    """The viewer page of `glb_name`; `query` adds its other parameters (t=SECONDS, autoplay=1)."""
    from urllib.parse import urlencode

    host, port = server.server_address[:2]
    return f"http://{host}:{port}/index.html?" + urlencode({"model": f"files/{glb_name}", **query})


def main(argv=None) -> int:
    parser = cli.parser("python -m sdetalk_jax.viewer", __doc__)
    parser.add_argument(
        "--folder", required=True, help="folder with .glb exports (animate --format glb)"
    )
    parser.add_argument("--port", type=int, default=8000, help="localhost port (0: any free one)")
    args = parser.parse_args(argv)
    try:
        server = serve(args.folder, args.port)
    except (ViewerError, OSError) as error:
        return cli.report(error)
    exports = sorted(name for name in os.listdir(args.folder) if name.endswith(".glb"))
    if not exports:
        print(f"no .glb in {args.folder} yet; the page will be at {page_url(server, 'NAME.glb')}")
    for name in exports:
        print(page_url(server, name))
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
