"""A dump mirror on 127.0.0.1: a MediaWiki XML export cut into its pages, and an HTTP server for a dump tree."""

import hashlib
import http.server
import re
import threading
import time
from pathlib import Path

CHUNK = 1 << 16  # DumpServer sends a body in pieces of this size


def split_pages(xml: bytes) -> tuple:
    """(header up to and with </siteinfo>, list of <page> elements, footer) of a MediaWiki XML export."""
    header_end = xml.index(b"</siteinfo>") + len(b"</siteinfo>\n")
    pages = re.findall(rb"  <page>.*?</page>\n", xml[header_end:], flags=re.S)
    return xml[:header_end], pages, b"</mediawiki>\n"


class DumpServer:
    """A local HTTP mirror on 127.0.0.1 serving a folder, with Range and If-Range support (a file's ETag is its
    sha1), a folder index, a count of the bytes sent per path, and faults to inject: drop the connection after N
    bytes, or answer a status code, once each; redirect a path; send a path slowly, as a slow link does. It can
    require an Authorization header on every request, and call a function as it handles each one."""

    def __init__(self, root: Path, certificate=None):
        """`certificate`: (cert file, key file) to serve https instead of http."""
        self.root = root
        self.sent = {}  # path -> bytes of body sent
        self.requests = []  # (path, Range header or None)
        self.headers = []  # (path, {header: value}) of every request
        self.drop_after = {}  # path -> bytes to send before closing the connection, once
        self.fail_with = {}  # path -> status code to answer, once
        self.redirect = {}  # path -> the Location to answer with (302)
        self.seconds_per_chunk = {}  # path -> seconds between chunks of CHUNK bytes
        self.authorization = None  # the Authorization header every request must carry (401 without it), or None
        self.on_request = None  # called with each request's path while the client waits for the answer
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                with server.lock:
                    server.requests.append((path, self.headers.get("Range")))
                    server.headers.append((path, dict(self.headers)))
                if server.on_request:
                    server.on_request(path)
                if server.authorization and self.headers.get("Authorization") != server.authorization:
                    return self._reply(401, b"", headers={"WWW-Authenticate": 'Basic realm="mirror"'})
                with server.lock:  # a refused request leaves the faults for the next one
                    fail = server.fail_with.pop(path, None)
                    drop = server.drop_after.pop(path, None)
                    location = server.redirect.get(path)
                    pause = server.seconds_per_chunk.get(path, 0)
                if fail:
                    return self._reply(fail, b"injected failure")
                if location:
                    self.send_response(302)
                    self.send_header("Location", location)
                    self.send_header("Content-Length", "0")
                    return self.end_headers()
                target = server.root / path.lstrip("/")
                if target.is_dir():
                    links = "".join(f'<a href="{p.name}/">{p.name}/</a>\n' for p in sorted(target.iterdir()))
                    return self._reply(200, f"<html><body>{links}</body></html>".encode(), "text/html")
                if not target.is_file():
                    return self._reply(404, b"not found")
                data = target.read_bytes()
                etag = f'"{hashlib.sha1(data).hexdigest()}"'
                start, status = 0, 200
                match = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
                if match and self.headers.get("If-Range", etag) != etag:
                    match = None  # the file changed since the client's bytes: the whole file, as RFC 9110 says
                if match:
                    start, status = int(match.group(1)), 206
                    if start >= len(data):
                        return self._reply(416, b"", headers={"Content-Range": f"bytes */{len(data)}"})
                body = data[start:]
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", etag)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if drop is not None:
                    body = body[:drop]
                    self.close_connection = True
                with server.lock:  # counted before sending: once the client has the bytes, the count is there
                    server.sent[path] = server.sent.get(path, 0) + len(body)
                for begin in range(0, len(body), CHUNK):
                    if pause:
                        time.sleep(pause)  # a slow link's pace, not synchronisation
                    self.wfile.write(body[begin:begin + CHUNK])

            def _reply(self, status, body, content_type="text/plain", headers=None):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if certificate:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*map(str, certificate))
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()
