"""GGUF headers over HTTP: plan a file without downloading it.

Only when the user names one (`https://HOST/.../model.gguf`, or `hf://OWNER/REPO/FILE.gguf`, which is
`$HF_ENDPOINT/OWNER/REPO/resolve/main/FILE`, huggingface.co by default). lowbit asks for the first bytes
of the file with an HTTP Range request and grows the range (doubling) until the bounded header parser
(lowbit.models.gguf_header) has the whole header; it never asks for tensor data. Plain http:// is taken
only for this machine (loopback addresses).

Limits: the bytes fetched per file (MAX_HEADER_BYTES), the time for the whole read (TIME_LIMIT_S),
redirects (MAX_REDIRECTS, https only). A server that ignores ranges (200 with the whole file), one that
answers with other bytes than asked, a header that does not parse, or no network: one LowbitError line.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tempfile
import time
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

from lowbit.errors import LowbitError
from lowbit.models.gguf_header import GGUFHeader, Truncated, read_header

MAX_HEADER_BYTES = 64 << 20  # the largest real headers (262K-entry vocabularies with merges) are ~15 MB
FIRST_RANGE = 256 << 10
TIME_LIMIT_S = 120.0  # the whole read, every file of a split model together
REQUEST_TIMEOUT_S = 30.0
MAX_REDIRECTS = 5
HF_DEFAULT_ENDPOINT = "https://huggingface.co"
_OFFLINE = ("1", "true", "yes", "on")
_HF = re.compile(r"^hf://([A-Za-z0-9][\w.-]{0,95})/([A-Za-z0-9][\w.-]{0,95})/(.+\.gguf)$", re.IGNORECASE)
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


def is_remote(text: str) -> bool:
    return isinstance(text, str) and text.lower().startswith(("https://", "http://", "hf://"))


def _loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(url: str, what: str) -> None:
    u = urlparse(url)
    if u.scheme == "https" and u.hostname:
        return
    if u.scheme == "http" and _loopback(u.hostname):
        return
    if u.scheme == "http":
        raise LowbitError(f"{what} {url!r}: plain http is taken only for this machine (loopback); use https://")
    raise LowbitError(f"{what} {url!r}: not an https:// address")


def url_of(source: str) -> str:
    """The https address of `source`: itself, or for hf://OWNER/REPO/FILE.gguf the Hub's resolve URL."""
    if source.lower().startswith("hf://"):
        m = _HF.match(source)
        if not m or ".." in source:
            raise LowbitError(f"{source!r}: want hf://OWNER/REPO/FILE.gguf (e.g. hf://unsloth/Qwen3.5-27B-GGUF/"
                              f"Qwen3.5-27B-Q4_K_M.gguf)")
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in _OFFLINE:
            raise LowbitError(f"offline (HF_HUB_OFFLINE is set): cannot read {source}")
        endpoint = (os.environ.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT).rstrip("/")
        _check_url(endpoint, "HF_ENDPOINT")
        owner, repo, path = m.groups()
        url = f"{endpoint}/{owner}/{repo}/resolve/main/{quote(path)}"
    else:
        url = source
    _check_url(url, "remote GGUF")
    if not unquote(urlparse(url).path).lower().endswith(".gguf"):
        raise LowbitError(f"{source!r} does not name a .gguf file")
    return url


@lru_cache(maxsize=1)
def _opener():
    """urllib's opener with checked redirects. The network stack (urllib.request, http.client, ssl: about 25 ms)
    loads only when an address is read, never on the simulator's start-up path."""
    import urllib.request

    class Redirects(urllib.request.HTTPRedirectHandler):
        max_redirections = MAX_REDIRECTS
        max_repeats = 2

        def redirect_request(self, req, fp, code, msg, headers, newurl):
            _check_url(newurl, f"redirect ({code}) to")  # never to file://, ftp:// or plain http elsewhere
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    return urllib.request.build_opener(Redirects)


@dataclass(frozen=True)
class Fetched:
    """What reading one file's header cost: the bytes the server sent and the requests made."""

    url: str
    file_size: int
    header_bytes: int
    fetched_bytes: int
    requests: int


class _Reader:
    """The first bytes of one remote file, grown by Range requests; every request checked."""

    def __init__(self, url: str, deadline: float, limit: int):
        self.url, self.deadline, self.limit = url, deadline, limit
        self.data = bytearray()
        self.size: int | None = None
        self.requests = 0
        self.final_url = url  # after redirects: later ranges go straight there

    def _remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise LowbitError(f"reading the header of {self.url} took longer than {TIME_LIMIT_S:g} s; gave up")
        return left

    def grow(self, wanted: int) -> None:
        """Have at least `wanted` bytes (or the whole file, if smaller)."""
        while len(self.data) < wanted and (self.size is None or len(self.data) < self.size):
            if len(self.data) >= self.limit:
                raise LowbitError(f"the header of {self.url} is larger than {self.limit:,} bytes; lowbit stops there")
            end = min(max(wanted, 2 * len(self.data)), self.limit)
            if self.size is not None:
                end = min(end, self.size)
            self._fetch(len(self.data), end - 1)

    def _fetch(self, start: int, end: int) -> None:
        import urllib.error
        import urllib.request
        from http.client import HTTPException

        req = urllib.request.Request(self.final_url, headers={
            "Range": f"bytes={start}-{end}", "Accept-Encoding": "identity", "User-Agent": "lowbit (GGUF header)"})
        self.requests += 1
        try:
            with _opener().open(req, timeout=min(REQUEST_TIMEOUT_S, self._remaining())) as resp:
                self.final_url = resp.geturl()
                self._take(resp, start, end)
        except LowbitError:
            raise
        except urllib.error.HTTPError as e:
            if 300 <= e.code < 400:
                raise LowbitError(f"{self.url}: more than {MAX_REDIRECTS} redirects, or a redirect loop "
                                  f"(HTTP {e.code})") from None
            if e.code == 416:
                raise LowbitError(f"{self.url}: the server has no bytes {start}-{end} (HTTP 416): the file is shorter "
                                  f"than its header says") from None
            hint = {401: " (gated or private?)", 403: " (gated or private?)", 404: " (no such file)"}.get(e.code, "")
            raise LowbitError(f"{self.url}: HTTP {e.code} {' '.join(str(e.reason).split())}{hint}") from None
        except urllib.error.URLError as e:
            reason = e.reason if isinstance(e.reason, str) else (getattr(e.reason, "strerror", None) or e.reason)
            raise LowbitError(f"cannot reach {urlparse(self.url).hostname} for {self.url} ({reason}): offline, or the "
                              f"address is wrong") from None
        except (TimeoutError, socket.timeout):
            raise LowbitError(f"{self.url}: no answer within the time limit") from None
        except (HTTPException, OSError, ValueError) as e:
            raise LowbitError(f"{self.url}: the server's answer broke off ({type(e).__name__}: {e})") from None

    def _take(self, resp, start: int, end: int) -> None:
        if resp.status == 200:
            raise LowbitError(f"{self.url}: the server ignores range requests (it answered 200 with the whole file); "
                              f"lowbit reads only headers and does not download files")
        if resp.status != 206:
            raise LowbitError(f"{self.url}: unexpected HTTP {resp.status} to a range request")
        encoding = (resp.headers.get("Content-Encoding") or "identity").lower()
        if encoding != "identity":
            raise LowbitError(f"{self.url}: the server sent the range {encoding}-encoded; want the raw bytes")
        m = _CONTENT_RANGE.match((resp.headers.get("Content-Range") or "").strip())
        if not m:
            raise LowbitError(f"{self.url}: a 206 answer without a valid Content-Range "
                              f"({resp.headers.get('Content-Range')!r})")
        got_start, got_end, total = (int(x) for x in m.groups())
        if got_start != start or got_end < got_start or got_end > end or got_end >= total or \
                (got_end < end and got_end != total - 1):
            raise LowbitError(f"{self.url}: asked for bytes {start}-{end}, the server sent {got_start}-{got_end} "
                              f"of {total}")
        if self.size is not None and total != self.size:
            raise LowbitError(f"{self.url}: the file's size changed between requests ({self.size:,} then {total:,})")
        want = got_end - got_start + 1
        body = bytearray()
        while len(body) <= want:  # one byte more than promised shows an over-long answer
            self._remaining()
            chunk = resp.read(min(1 << 20, want + 1 - len(body)))
            if not chunk:
                break
            body += chunk
        if len(body) != want:
            raise LowbitError(f"{self.url}: the server promised {want:,} bytes and sent "
                              f"{'more' if len(body) > want else f'{len(body):,}'}")
        self.size = total
        self.data += body


def read_remote_header(url: str, deadline: float | None = None, limit: int | None = None,
                       first_range: int | None = None) -> tuple[GGUFHeader, Fetched]:
    """The header of the GGUF at `url` (https, or http on loopback), fetching as few bytes as the parser needs:
    `first_range` bytes (FIRST_RANGE by default), then twice as many as held until the header parses."""
    deadline = deadline if deadline is not None else time.monotonic() + TIME_LIMIT_S
    reader = _Reader(url, deadline, limit or MAX_HEADER_BYTES)
    name = Path(unquote(urlparse(url).path)).name
    with tempfile.TemporaryDirectory(prefix="lowbit-remote-") as tmp:
        local = Path(tmp) / name
        wanted = first_range or FIRST_RANGE
        while True:
            reader.grow(wanted)
            local.write_bytes(reader.data)
            try:
                header = read_header(local, file_size=reader.size)
                break
            except Truncated as e:
                if reader.size is not None and len(reader.data) >= reader.size:
                    raise LowbitError(f"{url}: {e}") from None
                wanted = max(e.wanted, 2 * len(reader.data))
            except LowbitError as e:  # the parser names the file: name the address instead
                msg = str(e)
                raise LowbitError(f"{url}{msg[len(name):]}" if msg.startswith(name) else f"{url}: {msg}") from None
    fetched = Fetched(url, reader.size or 0, header.data_offset, len(reader.data), reader.requests)
    return replace(header, path=Path(name)), fetched
