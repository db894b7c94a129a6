"""fetch_file / fetch_wasabi_file against a local HTTP server started by the test."""

from __future__ import annotations

import hashlib
import http.server
import threading

import numpy as np
import pytest

from comptonsky.errors import FileFormatError, InvalidDataError, InvalidParameterError
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
