"""What the contract fakes of this directory share (not a fake itself): the
command line, atomic file writes, base64url, a quiet keep-alive HTTP/1.1
handler and server, and serving until SIGTERM/SIGINT.

The fakes import it as a sibling module: `python3 tests/fakes/NAME.py` puts
this directory on `sys.path`.
"""

import argparse
import base64
import os
import signal
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


def parse_args(description, dir_help):
    """--dir (made, its `url` removed: harnesses wait for a new one), --port, --uid."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--dir", required=True, help=dir_help)
    ap.add_argument("--port", type=int, default=0, help="0 or absent: an ephemeral port")
    ap.add_argument("--uid", type=int, default=os.getuid(), help="the caller uid in config.yaml")
    args = ap.parse_args()
    args.dir = os.path.abspath(args.dir)
    os.makedirs(args.dir, exist_ok=True)
    if os.path.exists(os.path.join(args.dir, "url")):
        os.unlink(os.path.join(args.dir, "url"))
    return args


def write_file(path, text, mode=0o644):
    tmp = f"{path}.tmp{os.getpid()}"
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class QuietHandler(BaseHTTPRequestHandler):
    """Keep-alive HTTP/1.1 (every answer has a Content-Length); one log line
    per request, `server_version: METHOD PATH -> STATUS`, never headers,
    queries or bodies."""

    protocol_version = "HTTP/1.1"
    sys_version = ""
    timeout = 120  # an idle kept-alive connection is closed after this

    def log_request(self, code="-", size="-"):
        path = urlsplit(getattr(self, "path", "") or "").path or "-"
        sys.stderr.write(f"{self.server_version}: {getattr(self, 'command', None) or '-'} {path} -> {code}\n")

    def log_message(self, fmt, *args):
        pass


class QuietServer(ThreadingHTTPServer):
    daemon_threads, allow_reuse_address, request_queue_size = True, True, 128

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], OSError):  # resets, timeouts, TLS errors: quiet
            traceback.print_exc(file=sys.stderr)


def serve(server, name, banner):
    """Serves until SIGTERM or SIGINT, saying so on stderr as `name`."""
    stop = lambda *_: threading.Thread(target=server.shutdown, daemon=True).start()  # noqa: E731
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sys.stderr.write(f"{name}: {banner}\n")
    sys.stderr.flush()
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    sys.stderr.write(f"{name}: stopped\n")
