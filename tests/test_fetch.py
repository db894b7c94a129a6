"""fetch_file / fetch_wasabi_file against a local HTTP server started by the test."""

from __future__ import annotations

import errno
import hashlib
import http.server
import io
import json
import logging
import os
import threading

import numpy as np
import pytest

from comptonsky.errors import (
    FileFormatError,
    InvalidDataError,
    InvalidParameterError,
    OutputError,
)
from comptonsky.io.fetch import DATA_URL_ENV, fetch_file, fetch_wasabi_file, md5sum

PAYLOAD = np.random.default_rng(7).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


class _Server:
    """Serves PAYLOAD under /data/...; honours Range unless told not to; can drop connections."""

    def __init__(self):
        self.requests: list[dict] = []
        self.cut_after: int | None = None  # close the next response after this many bytes
        self.honour_range = True
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append({"path": self.path, "range": rng})
                if not self.path.startswith("/data/"):
                    self.send_error(404, "no such file")
                    return
                start = 0
                if rng and server.honour_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(PAYLOAD):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
                else:
                    self.send_response(200)
                body = PAYLOAD[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    cut, server.cut_after = server.cut_after, None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def _running_server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture
def server(_running_server):
    """The module's server with its request log and fault settings reset."""
    s = _running_server
    s.requests.clear()
    s.cut_after = None
    s.honour_range = True
    return s


def _no_partials(directory):
    return [p.name for p in directory.iterdir() if p.name.endswith(".part")] == []


def test_download_verifies_checksum_and_leaves_no_partial(server, tmp_path):
    out = fetch_file("data/events.fits.gz", checksum=MD5, output=tmp_path / "ev.fits.gz",
                     base_url=server.url, progress=False)
    assert out == tmp_path / "ev.fits.gz"
    assert out.read_bytes() == PAYLOAD
    assert md5sum(out) == MD5
    assert _no_partials(tmp_path)
    assert server.requests == [{"path": "/data/events.fits.gz", "range": None}]


def test_output_directory_and_existing_file_skipped(server, tmp_path):
    out = fetch_file("data/sub/resp.h5", checksum=MD5, output=tmp_path, base_url=server.url,
                     progress=False)
    assert out == tmp_path / "resp.h5"
    n = len(server.requests)
    again = fetch_file("data/sub/resp.h5", checksum=MD5, output=tmp_path, base_url=server.url,
                       progress=False)
    assert again == out and len(server.requests) == n  # verified locally, not downloaded


def test_existing_file_with_other_checksum(server, tmp_path):
    out = tmp_path / "resp.h5"
    out.write_bytes(b"not the file")
    with pytest.raises(InvalidDataError, match="resp.h5 exists but its MD5"):
        fetch_file("data/resp.h5", checksum=MD5, output=out, base_url=server.url, progress=False)
    fetch_file("data/resp.h5", checksum=MD5, output=out, base_url=server.url, override=True,
               progress=False)
    assert out.read_bytes() == PAYLOAD


def test_wrong_checksum_deletes_download(server, tmp_path):
    out = tmp_path / "ev.fits.gz"
    with pytest.raises(InvalidDataError, match="expected 0123"):
        fetch_file("data/ev.fits.gz", checksum="0123456789abcdef0123456789abcdef", output=out,
                   base_url=server.url, progress=False)
    assert not out.exists()
    assert _no_partials(tmp_path)


def test_bad_checksum_string(tmp_path):
    with pytest.raises(InvalidParameterError, match="32-digit"):
        fetch_file("data/x", checksum="abc", output=tmp_path / "x", base_url="http://127.0.0.1:9")


def test_interrupted_download_resumes_with_range(server, tmp_path):
    out = tmp_path / "ev.fits.gz"
    server.cut_after = 100_000
    with pytest.raises(FileFormatError, match="call again to resume"):
        fetch_file("data/ev.fits.gz", checksum=MD5, output=out, base_url=server.url,
                   retries=0, progress=False)
    assert not out.exists()  # never a partial file under the final name
    part = tmp_path / ".ev.fits.gz.part"
    assert part.stat().st_size == 100_000
    fetch_file("data/ev.fits.gz", checksum=MD5, output=out, base_url=server.url, progress=False)
    assert out.read_bytes() == PAYLOAD
    assert server.requests[-1]["range"] == "bytes=100000-"
    assert not part.exists()


def test_dropped_connection_retried_in_the_same_call(server, tmp_path):
    server.cut_after = 12_345
    out = fetch_file("data/a.bin", checksum=MD5, output=tmp_path / "a.bin", base_url=server.url,
                     retries=2, progress=False)
    assert out.read_bytes() == PAYLOAD
    assert [r["range"] for r in server.requests] == [None, "bytes=12345-"]


def test_server_ignoring_range_starts_over(server, tmp_path):
    server.cut_after = 50_000
    server.honour_range = False
    out = fetch_file("data/a.bin", checksum=MD5, output=tmp_path / "a.bin", base_url=server.url,
                     retries=1, progress=False)
    assert out.read_bytes() == PAYLOAD


def test_complete_partial_file_is_verified(server, tmp_path):
    (tmp_path / ".a.bin.part").write_bytes(PAYLOAD)  # downloaded fully, rename was interrupted
    out = fetch_file("data/a.bin", checksum=MD5, output=tmp_path / "a.bin", base_url=server.url,
                     progress=False)
    assert out.read_bytes() == PAYLOAD


def test_http_error_names_url(server, tmp_path):
    with pytest.raises(FileFormatError, match=r"/missing/x\.h5: HTTP 404"):
        fetch_file("missing/x.h5", output=tmp_path / "x.h5", base_url=server.url,
                   progress=False)
    assert not (tmp_path / "x.h5").exists()


def test_fetch_wasabi_file_uses_environment_base_url(server, tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_URL_ENV, server.url + "/data/")
    out = fetch_wasabi_file("COSI-SMEX/DC2/Data/Sources/511 thin disk.fits.gz",
                            output=tmp_path / "src.fits.gz", checksum=MD5, progress=False)
    assert out.read_bytes() == PAYLOAD
    assert server.requests[-1]["path"] == \
        "/data/COSI-SMEX/DC2/Data/Sources/511%20thin%20disk.fits.gz"


def test_fetch_wasabi_file_endpoint_and_bucket(server, tmp_path):
    out = fetch_wasabi_file("x/y.h5", output=tmp_path / "y.h5", checksum=MD5,
                            endpoint=server.url, bucket="data", progress=False)
    assert out.read_bytes() == PAYLOAD
    assert server.requests[-1]["path"] == "/data/x/y.h5"


# --------------------------------------------------------------------------- misbehaving servers

OTHER = np.random.default_rng(8).integers(0, 256, len(PAYLOAD), dtype=np.uint8).tobytes()


class _Scripted:
    """A local server (HTTP/1.0, so a body may end at the connection close) that misbehaves as
    told. It answers at most ``max_requests`` requests (then 503) and shuts itself down after
    ``lifetime`` seconds, so a client that loops cannot hang the suite."""

    def __init__(self, *, etag='"v1"', content_length=True, honour_range=True,
                 cuts=(), range_from_zero=False, max_requests=6, lifetime=20.0):
        self.requests: list[dict] = []
        self.cuts = list(cuts)  # the n-th response stops after cuts[n] bytes
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rng, if_range = self.headers.get("Range"), self.headers.get("If-Range")
                server.requests.append({"range": rng, "if_range": if_range})
                if len(server.requests) > max_requests:
                    self.send_error(503, "request budget of the test server spent")
                    return
                start = 0
                if rng and honour_range and (if_range is None or if_range == etag):
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(PAYLOAD):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                        self.end_headers()
                        return
                    if range_from_zero:
                        start = 0
                    self.send_response(206)
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
                else:
                    self.send_response(200)
                body = PAYLOAD[start:]
                if content_length:
                    self.send_header("Content-Length", str(len(body)))
                if etag:
                    self.send_header("ETag", etag)
                self.end_headers()
                cut = server.cuts.pop(0) if server.cuts else None
                self.wfile.write(body if cut is None else body[:cut])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data/a.bin"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.watchdog = threading.Timer(lifetime, self.httpd.shutdown)
        self.watchdog.daemon = True

    def __enter__(self):
        self.thread.start()
        self.watchdog.start()
        return self

    def __exit__(self, *exc):
        self.watchdog.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive()


def _stale(tmp_path, data: bytes, validator: str | None = None, url: str | None = None):
    (tmp_path / ".a.bin.part").write_bytes(data)
    if validator is not None:
        (tmp_path / ".a.bin.part.json").write_text(
            json.dumps({"url": url, "validator": validator, "length": len(PAYLOAD)}))


def test_no_content_length_and_early_close_is_not_taken_for_the_file(tmp_path):
    with _Scripted(content_length=False, cuts=[100_000]) as s:
        out = fetch_file(s.url, output=tmp_path / "a.bin", progress=False)
    assert out.read_bytes() == PAYLOAD
    # the cut body was followed by a request for the bytes past it, then the rest
    assert [r["range"] for r in s.requests][:2] == [None, "bytes=100000-"]
    assert s.requests[1]["if_range"] == '"v1"'
    assert _no_partials(tmp_path) and not (tmp_path / ".a.bin.part.json").exists()


def test_no_content_length_complete_body_confirmed_by_416(tmp_path):
    with _Scripted(content_length=False) as s:
        out = fetch_file(s.url, output=tmp_path / "a.bin", progress=False)
    assert out.read_bytes() == PAYLOAD
    assert [r["range"] for r in s.requests] == [None, f"bytes={len(PAYLOAD)}-"]


def test_no_length_and_no_ranges_cannot_be_verified(tmp_path):
    with _Scripted(content_length=False, honour_range=False, cuts=[100_000]) as s, \
            pytest.raises(FileFormatError, match=r"a\.bin: the server announces no length.*"
                                                 r"checksum="):
        fetch_file(s.url, output=tmp_path / "a.bin", progress=False)
    assert not (tmp_path / "a.bin").exists()


def test_stale_part_without_validator_is_not_resumed(tmp_path, caplog):
    _stale(tmp_path, OTHER[:100_000])
    with _Scripted() as s, caplog.at_level(logging.WARNING):
        out = fetch_file(s.url, output=tmp_path / "a.bin", progress=False)
    assert out.read_bytes() == PAYLOAD
    assert s.requests == [{"range": None, "if_range": None}]
    assert "no checksum given" in caplog.text


def test_stale_part_of_another_version_sends_if_range(tmp_path):
    with _Scripted() as s:
        _stale(tmp_path, OTHER[:100_000], '"v0"', s.url)
        out = fetch_file(s.url, output=tmp_path / "a.bin", progress=False)
    assert out.read_bytes() == PAYLOAD
    assert s.requests == [{"range": "bytes=100000-", "if_range": '"v0"'}]


def test_part_of_the_same_version_resumes(tmp_path):
    with _Scripted() as s:
        _stale(tmp_path, PAYLOAD[:100_000], '"v1"', s.url)
        out = fetch_file(s.url, output=tmp_path / "a.bin", progress=False)
    assert out.read_bytes() == PAYLOAD
    assert s.requests == [{"range": "bytes=100000-", "if_range": '"v1"'}]


def test_oversized_part_after_416_starts_over(tmp_path):
    with _Scripted() as s:
        _stale(tmp_path, PAYLOAD + b"tail of another version", '"v1"', s.url)
        out = fetch_file(s.url, output=tmp_path / "a.bin", progress=False)
    assert out.read_bytes() == PAYLOAD
    assert [r["range"] for r in s.requests] == [f"bytes={len(PAYLOAD) + 23}-", None]


def test_partial_answer_from_another_offset_is_not_appended(tmp_path):
    with _Scripted(range_from_zero=True) as s:
        _stale(tmp_path, PAYLOAD[:100_000], '"v1"', s.url)
        out = fetch_file(s.url, output=tmp_path / "a.bin", progress=False)
    assert out.read_bytes() == PAYLOAD
    assert [r["range"] for r in s.requests] == ["bytes=100000-", None]


def test_short_body_without_validator_or_checksum_starts_over(tmp_path):
    with _Scripted(etag=None, cuts=[100_000]) as s:
        out = fetch_file(s.url, output=tmp_path / "a.bin", progress=False)
    assert out.read_bytes() == PAYLOAD
    assert [r["range"] for r in s.requests] == [None, None]


def test_checksum_mismatch_after_resuming_a_stale_part_downloads_again(tmp_path):
    _stale(tmp_path, OTHER[:100_000])
    with _Scripted() as s:
        out = fetch_file(s.url, checksum=MD5, output=tmp_path / "a.bin", progress=False)
    assert out.read_bytes() == PAYLOAD
    assert [r["range"] for r in s.requests] == ["bytes=100000-", None]


def test_server_that_keeps_failing_is_given_up_on(tmp_path):
    with _Scripted(cuts=[1000] * 10) as s, \
            pytest.raises(FileFormatError, match="download failed after 3 attempt"):
        fetch_file(s.url, output=tmp_path / "a.bin", retries=2, progress=False)
    assert len(s.requests) == 3 and not (tmp_path / "a.bin").exists()


def test_full_disk_during_download(tmp_path, monkeypatch):
    import comptonsky.io.fetch as fetch_mod

    class _Full(io.RawIOBase):
        def __init__(self, path, mode, buffering=-1):
            self._fh = open(path, mode, buffering=buffering)

        def writable(self):
            return True

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def close(self):
            self._fh.close()
            super().close()

    monkeypatch.setattr(fetch_mod, "open", _Full, raising=False)
    with _Scripted() as s, pytest.raises(OutputError, match=r"a\.bin\.part: cannot be written "
                                                          r"\(No space left on device\)"):
        fetch_file(s.url, output=tmp_path / "sub" / "a.bin", progress=False)
    assert not (tmp_path / "sub" / "a.bin").exists()
