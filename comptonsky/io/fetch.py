"""Downloading data products (responses, event files) with resume and MD5 verification.

Files are fetched over HTTP(S) from a base URL, by default the COSI team's public Wasabi bucket;
set the environment variable ``COMPTONSKY_DATA_URL`` (or pass ``base_url=``) to use a mirror.

A download goes to a partial file beside the output (``.NAME.part``). If it is interrupted, the
next call (or the automatic retry) asks the server for the remaining bytes only (HTTP ``Range``)
and continues; a server that ignores ranges is handled by starting over. The partial file is
renamed to the final name only after the MD5 checksum (when given) matched, so the final name
never holds a partial or corrupt file.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import FileFormatError, InvalidDataError, InvalidParameterError

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


def fetch_file(remote_path: str, checksum: str | None = None,
               output: str | os.PathLike | None = None, *, base_url: str | None = None,
               override: bool = False, retries: int = 3, timeout: float = 60.0,
               progress: bool = True) -> Path:
    """Download ``base_url/remote_path`` to ``output``, resuming and verifying it.

    Parameters
    ----------
    remote_path : str
        Path of the file under the base URL, e.g.
        ``"COSI-SMEX/DC2/Data/Sources/511_thin_disk_3months_unbinned_data.fits.gz"``.
        A full ``http(s)://`` URL is used as is.
    checksum : str, optional
        Expected MD5 (32 hex digits). Strongly recommended: without it a file already present is
        trusted as is.
    output : path-like, optional
        Destination (default: the file's name in the current directory).
    base_url : str, optional
        Default: ``$COMPTONSKY_DATA_URL`` or :data:`DEFAULT_DATA_URL`.
    override : bool
        Download again even if ``output`` exists (and replace a file whose checksum differs).
    retries : int
        Further attempts after a dropped connection, each resuming where the last one stopped.
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
        If the server answers with an error (404, ...) or the download keeps failing; the partial
        file is kept so that a later call resumes.
    InvalidDataError
        If the checksum does not match (the bad download is deleted), or ``output`` exists with a
        different checksum and ``override`` is False.
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
            logger.info("%s exists; not downloading again (pass override=True to)", output)
            return output
        found = md5sum(output)
        if found == checksum:
            logger.info("%s exists with the expected checksum; nothing to download", output)
            return output
        raise InvalidDataError(
            f"{output} exists but its MD5 is {found}, not {checksum}; pass override=True to "
            "download it again")

    output.parent.mkdir(parents=True, exist_ok=True)
    part = _partial_path(output)
    attempt = 0
    while True:
        try:
            _download(url, part, timeout=timeout, progress=progress, label=name)
            break
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                TimeoutError, _Incomplete) as exc:
            if isinstance(exc, urllib.error.HTTPError) and exc.code != 416:
                raise FileFormatError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
            attempt += 1
            if attempt > retries:
                have = part.stat().st_size if part.exists() else 0
                raise FileFormatError(
                    f"{url}: download failed after {attempt} attempt(s) ({exc}); {have} bytes "
                    f"kept in {part}, call again to resume") from exc
            logger.warning("%s: %s; resuming (attempt %d of %d)", url, exc, attempt + 1,
                           retries + 1)
            time.sleep(min(2.0 ** (attempt - 1), 10.0) * 0.1)
    if checksum is not None:
        found = md5sum(part)
        if found != checksum:
            part.unlink(missing_ok=True)
            raise InvalidDataError(
                f"{url}: MD5 of the download is {found}, expected {checksum}; the download was "
                "deleted")
    os.replace(part, output)
    logger.info("downloaded %s to %s", url, output)
    return output


class _Incomplete(Exception):
    """The connection closed before the announced length was received."""


def _download(url: str, part: Path, *, timeout: float, progress: bool, label: str) -> None:
    """Fetch ``url`` into ``part``, continuing an existing partial file when the server allows."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "comptonsky"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - http(s) only
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            # the partial file already holds everything (or is longer than the file): verify by
            # checksum later; if it is wrong, the caller deletes it
            logger.info("%s: nothing left to download (%d bytes present)", url, have)
            return
        raise
    with resp:
        status = getattr(resp, "status", 200)
        length = resp.headers.get("Content-Length")
        if have and status == 206:
            mode = "ab"
            logger.info("%s: resuming at byte %d", url, have)
        else:
            if have:
                logger.info("%s: server ignored the range request; starting over", url)
            mode, have = "wb", 0
        expected = None if length is None else int(length)
        total = None if expected is None else have + expected
        got = 0
        with open(part, mode) as fh, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                         unit_divisor=1024, desc=label, disable=not progress,
                                         dynamic_ncols=True) as bar:
            while True:
                block = resp.read(_BLOCK)
                if not block:
                    break
                fh.write(block)
                got += len(block)
                bar.update(len(block))
        if expected is not None and got < expected:
            raise _Incomplete(f"connection closed after {have + got} of {total} bytes")


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
