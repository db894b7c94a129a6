"""Downloading data products (responses, event files) with resume and MD5 verification.

Files are fetched over HTTP(S) from a base URL, by default the COSI team's public Wasabi bucket;
set the environment variable ``COMPTONSKY_DATA_URL`` (or pass ``base_url=``) to use a mirror.

A download goes to a partial file beside the output (``.NAME.part``, with what the server said
about the file in ``.NAME.part.json``). If it is interrupted, the next call (or the automatic
retry) asks the server for the remaining bytes only (HTTP ``Range`` with ``If-Range``) when it can
be sure they belong to the same file, and starts over otherwise. The partial file is renamed to
the final name only once its length matches what the server announced and the MD5 checksum
(when given) matched, so the final name never holds a partial, mixed or corrupt file.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import FileFormatError, InvalidDataError, InvalidParameterError, OutputError
from .atomic import _make_parents, _remove_folders, check_output_path

__all__ = ["DEFAULT_DATA_URL", "data_url", "fetch_file", "fetch_wasabi_file", "md5sum"]

logger = logging.getLogger(__name__)

#: Public bucket of the COSI pipeline (anonymous HTTPS access).
DEFAULT_DATA_URL = "https://s3.us-west-1.wasabisys.com/cosi-pipeline-public"
#: Environment variable overriding :data:`DEFAULT_DATA_URL`.
DATA_URL_ENV = "COMPTONSKY_DATA_URL"

_BLOCK = 1 << 20


def data_url(base_url: str | None = None) -> str:
    """The base URL in use: ``base_url``, else ``$COMPTONSKY_DATA_URL``, else the default."""
    url = base_url or os.environ.get(DATA_URL_ENV) or DEFAULT_DATA_URL
    return url.rstrip("/")


def md5sum(path: str | os.PathLike, block: int = _BLOCK) -> str:
    """Hex MD5 digest of a file, read in blocks."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


def _partial_path(output: Path) -> Path:
    return output.with_name(f".{output.name}.part")


def _check_checksum(checksum: str | None) -> str | None:
    if checksum is None:
        return None
    c = str(checksum).strip().lower()
    if len(c) != 32 or any(ch not in "0123456789abcdef" for ch in c):
        raise InvalidParameterError(f"checksum must be a 32-digit hex MD5 digest, got {checksum!r}")
    return c


def _meta_path(output: Path) -> Path:
    return output.with_name(f".{output.name}.part.json")


def _read_meta(path: Path) -> dict:
    """What the server said about the file a partial download belongs to (empty if unknown)."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _discard(*paths: Path) -> None:
    for p in paths:
        with contextlib.suppress(OSError):
            p.unlink()


def fetch_file(remote_path: str, checksum: str | None = None,
               output: str | os.PathLike | None = None, *, base_url: str | None = None,
               override: bool = False, retries: int = 3, timeout: float = 60.0,
               progress: bool = True) -> Path:
    """Download ``base_url/remote_path`` to ``output``, resuming and verifying it.

    The file is received into ``.NAME.part`` beside ``output`` and renamed only once it is
    complete: its length matches what the server announced (``Content-Length`` or
    ``Content-Range``; a server that announces none is asked for the bytes past the end, which
    must be none) and, when given, its MD5 matches ``checksum``. An interrupted download is
    resumed with an HTTP ``Range`` request only when it can be told to continue the same file:
    the server's validator (``ETag``, else ``Last-Modified``, kept beside the partial file) is
    sent as ``If-Range``, or ``checksum`` will check the result (a mismatch after resuming
    starts over once). Anything else (no validator, a 416 answer, a range that does not start
    where asked, more bytes than announced) starts over.

    Parameters
    ----------
    remote_path : str
        Path of the file under the base URL, e.g.
        ``"COSI-SMEX/DC2/Data/Sources/511_thin_disk_3months_unbinned_data.fits.gz"``.
        A full ``http(s)://`` URL is used as is.
    checksum : str, optional
        Expected MD5 (32 hex digits). Strongly recommended (a warning is logged without it):
        otherwise only the length is checked, and a file already present is trusted as is.
    output : path-like, optional
        Destination (default: the file's name in the current directory); a folder means the
        file's name in it.
    base_url : str, optional
        Default: ``$COMPTONSKY_DATA_URL`` or :data:`DEFAULT_DATA_URL`.
    override : bool
        Download again even if ``output`` exists (and replace a file whose checksum differs).
    retries : int
        Further attempts after a dropped connection or a restart, each resuming where the last
        one stopped when that is safe.
    timeout : float
        Socket timeout per request (s).
    progress : bool
        Show a progress bar over bytes.

    Returns
    -------
    pathlib.Path
        The downloaded (or already present and verified) file.

    Raises
    ------
    FileFormatError
        If the server answers with an error (404, ...), the download keeps failing, or its
        completeness cannot be established; the partial file is kept so that a later call
        resumes.
    InvalidDataError
        If the checksum does not match (the bad download is deleted), or ``output`` exists with a
        different checksum and ``override`` is False.
    OutputError
        If the output cannot be written (a folder in the way, a full disk).
    """
    checksum = _check_checksum(checksum)
    if remote_path.startswith(("http://", "https://")):
        url = remote_path
    else:
        url = f"{data_url(base_url)}/{urllib.parse.quote(remote_path.lstrip('/'))}"
    name = Path(urllib.parse.urlparse(url).path).name
    if not name:
        raise InvalidParameterError(f"cannot tell a file name from {remote_path!r}")
    output = Path(output) if output is not None else Path.cwd() / name
    if output.is_dir():
        output = output / name

    if output.exists() and not override:
        if checksum is None:
            logger.warning("%s exists and no checksum was given: trusted as is, not verified "
                           "(pass override=True to download it again)", output)
            return output
        found = md5sum(output)
        if found == checksum:
            logger.info("%s exists with the expected checksum; nothing to download", output)
            return output
        raise InvalidDataError(
            f"{output} exists but its MD5 is {found}, not {checksum}; pass override=True to "
            "download it again")
    check_output_path(output)
    if checksum is None:
        logger.warning("%s: no checksum given; the download is checked only against the length "
                       "the server announces", url)

    created = _make_parents(output.parent)
    part, meta = _partial_path(output), _meta_path(output)
    attempt = 0
    fresh_retry = False  # whether a checksum mismatch after resuming was retried from scratch
    while True:
        state = _State()
        try:
            while True:
                try:
                    _download(url, part, meta, state, checksum_given=checksum is not None,
                              timeout=timeout, progress=progress, label=name)
                    break
                except (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                        TimeoutError, ssl.SSLError, _Incomplete, _Restart) as exc:
                    if isinstance(exc, urllib.error.HTTPError):
                        raise FileFormatError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
                    if isinstance(exc, _Restart):
                        _discard(part, meta)
                    attempt += 1
                    if attempt > retries:
                        have = part.stat().st_size if part.exists() else 0
                        raise FileFormatError(
                            f"{url}: download failed after {attempt} attempt(s) ({exc}); {have} "
                            f"bytes kept in {part}, call again to resume") from exc
                    what = "starting over" if isinstance(exc, _Restart) else "resuming"
                    logger.warning("%s: %s; %s (attempt %d of %d)", url, exc, what, attempt + 1,
                                   retries + 1)
                    if not isinstance(exc, _Restart):
                        time.sleep(min(2.0 ** (attempt - 1), 10.0) * 0.1)
        except _LocalWriteError as exc:
            raise OutputError(
                f"{part}: cannot be written ({os.strerror(exc.errno) if exc.errno else exc}); "
                "call again to resume once there is room") from exc
        except BaseException:
            if not part.exists():
                _discard(meta)
                _remove_folders(created)
            raise
        if checksum is not None:
            found = md5sum(part)
            if found != checksum:
                _discard(part, meta)
                if state.resumed and not fresh_retry:
                    logger.warning("%s: MD5 of the resumed download is %s, expected %s; the "
                                   "partial file was of another version, downloading again", url,
                                   found, checksum)
                    fresh_retry = True
                    continue
                _remove_folders(created)
                raise InvalidDataError(
                    f"{url}: MD5 of the download is {found}, expected {checksum}; the download "
                    "was deleted")
        break
    try:
        os.replace(part, output)
    except OSError as exc:
        raise OutputError(f"{output}: cannot be written ({os.strerror(exc.errno)})") from exc
    _discard(meta)
    logger.info("downloaded %s to %s", url, output)
    return output


class _Incomplete(Exception):
    """The connection closed before the announced length was received."""


class _Restart(Exception):
    """The partial file cannot be continued: the download starts over."""


class _LocalWriteError(Exception):
    """Writing the partial file failed (a full disk...); carries the OSError's errno."""

    def __init__(self, exc: OSError):
        super().__init__(str(exc))
        self.errno = exc.errno


class _State:
    """What happened during one download (for the checksum decision)."""

    resumed = False


def _content_range(text: str | None) -> tuple[int, int | None]:
    """(first byte, total length or None) of a ``Content-Range: bytes a-b/total`` header."""
    try:
        unit, _, spec = (text or "").strip().partition(" ")
        span, _, total = spec.partition("/")
        first, _, last = span.partition("-")
        if unit != "bytes" or int(last) < int(first):
            raise ValueError
        return int(first), None if total.strip() == "*" else int(total)
    except ValueError:
        raise _Restart(f"unreadable Content-Range {text!r}") from None


def _int_header(resp, name: str) -> int | None:
    try:
        value = int(resp.headers.get(name))
    except (TypeError, ValueError):
        return None
    return value if value >= 0 else None


def _validator(resp) -> str | None:
    """A validator for ``If-Range``: a strong ETag, else Last-Modified."""
    etag = resp.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return resp.headers.get("Last-Modified")


def _request(url: str, headers: dict[str, str], timeout: float):
    req = urllib.request.Request(url, headers={"User-Agent": "comptonsky", **headers})
    return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - http(s) only


def _download(url: str, part: Path, meta_path: Path, state: _State, *, checksum_given: bool,
              timeout: float, progress: bool, label: str) -> None:
    """Fetch ``url`` into ``part``, continuing it when that is known to be safe (a validator
    for ``If-Range``, or a checksum to check the result); return once ``part`` holds the whole
    file as announced by the server."""
    have = part.stat().st_size if part.exists() else 0
    meta = _read_meta(meta_path)
    validator = meta.get("validator") if meta.get("url") == url else None
    headers: dict[str, str] = {}
    if have and (validator or checksum_given):
        headers["Range"] = f"bytes={have}-"
        if validator:
            headers["If-Range"] = validator
    elif have:
        logger.info("%s: %s holds %d bytes of an unknown version (no ETag or Last-Modified "
                    "kept); starting over", url, part, have)
    try:
        resp = _request(url, headers, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and "Range" in headers:
            raise _Restart(f"the server has no bytes past the {have} of the partial file "
                           "(HTTP 416)") from exc
        raise
    with resp:
        status = getattr(resp, "status", 200)
        if status == 206:
            first, total = _content_range(resp.headers.get("Content-Range"))
            expected_first = have if "Range" in headers else 0
            if first != expected_first:
                raise _Restart(f"the server sent bytes from {first}, not from {expected_first}")
            if total is not None and meta.get("length") not in (None, total) and first:
                raise _Restart(f"the file is now {total} bytes, not {meta['length']}")
        else:
            if "Range" in headers:
                logger.info("%s: the server sent the whole file; starting over", url)
            first, total = 0, _int_header(resp, "Content-Length")
        if first == 0:
            have = 0
            _write_meta(meta_path, {"url": url, "validator": _validator(resp), "length": total})
        else:
            state.resumed = True
            logger.info("%s: resuming at byte %d", url, have)
        _receive(resp, part, "ab" if first else "wb", have, total, progress, label)
    size = part.stat().st_size
    if total is None:
        if checksum_given:
            return  # the MD5 decides
        total = _confirm_length(url, size, validator or _validator(resp), timeout)
    if size < total:
        raise _Incomplete(f"connection closed after {size} of {total} bytes")
    if size > total:
        raise _Restart(f"{size} bytes received, more than the {total} announced")


def _write_meta(path: Path, meta: dict) -> None:
    try:
        path.write_text(json.dumps(meta))
    except OSError as exc:
        raise _LocalWriteError(exc) from exc


def _receive(resp, part: Path, mode: str, have: int, total: int | None, progress: bool,
             label: str) -> None:
    """Copy the response body into ``part`` (unbuffered: a failed write fails here)."""
    try:
        fh = open(part, mode, buffering=0)  # noqa: SIM115 - closed below
    except OSError as exc:
        raise _LocalWriteError(exc) from exc
    with fh, tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                  desc=label, disable=not progress, dynamic_ncols=True) as bar:
        while block := resp.read(_BLOCK):
            try:
                fh.write(block)
            except OSError as exc:
                raise _LocalWriteError(exc) from exc
            bar.update(len(block))


def _confirm_length(url: str, size: int, validator: str | None, timeout: float) -> int:
    """The file's length when the server did not announce it: ask for the bytes past ``size``.

    A 416 answer says there are none; a partial answer says the transfer was cut short.
    """
    headers = {"Range": f"bytes={size}-"}
    if validator:
        headers["If-Range"] = validator
    try:
        resp = _request(url, headers, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code != 416:
            raise
        rng = exc.headers.get("Content-Range", "") if exc.headers else ""
        total = rng.rpartition("/")[2].strip()
        return int(total) if total.isdigit() else size
    with resp:
        status = getattr(resp, "status", 200)
        if status == 206:
            first, total = _content_range(resp.headers.get("Content-Range"))
            if first != size:
                raise _Restart(f"the server sent bytes from {first}, not from {size}")
            return total if total is not None else size + 1  # more bytes exist: incomplete
        length = _int_header(resp, "Content-Length")
    if length is None:
        raise FileFormatError(
            f"{url}: the server announces no length and ignores Range requests, so a complete "
            "download cannot be told from a cut one; pass checksum= (the file's MD5)")
    return length


def fetch_wasabi_file(file: str, output: str | os.PathLike | None = None,
                      override: bool = False, checksum: str | None = None,
                      bucket: str | None = None, endpoint: str | None = None,
                      **kwargs) -> Path:
    """Download a COSI data product by its path in the public bucket (the tutorial's name).

    Parameters
    ----------
    file : str
        Path in the bucket, e.g. ``"COSI-SMEX/develop/Data/Responses/PointSourceResponse/
        psr_gal_511_DC2.h5"``.
    output : path-like, optional
        Destination (default: the file's name in the current directory).
    override : bool
        Download again even if ``output`` exists.
    checksum : str, optional
        Expected MD5.
    bucket, endpoint : str, optional
        Bucket name and endpoint URL; together they replace the base URL
        (``{endpoint}/{bucket}``). Default: ``$COMPTONSKY_DATA_URL`` or the public COSI bucket.
    **kwargs
        Passed to :func:`fetch_file` (``retries``, ``timeout``, ``progress``, ``base_url``).

    Returns
    -------
    pathlib.Path
        The local file.
    """
    base_url = kwargs.pop("base_url", None)
    if endpoint is not None or bucket is not None:
        default = urllib.parse.urlparse(DEFAULT_DATA_URL)
        endpoint = (endpoint or f"{default.scheme}://{default.netloc}").rstrip("/")
        bucket = bucket or default.path.strip("/")
        base_url = f"{endpoint}/{bucket}"
    for key in ("access_key", "secret_key"):
        kwargs.pop(key, None)  # accepted for compatibility; public files need no credentials
    return fetch_file(file, checksum=checksum, output=output, base_url=base_url,
                      override=override, **kwargs)
