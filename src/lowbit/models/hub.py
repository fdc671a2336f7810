"""`--hf ORG/NAME`: fetch one config.json from the Hugging Face Hub, only when asked.

Nothing else in lowbit touches the network. Offline (HF_HUB_OFFLINE set, no connection, or no
huggingface_hub installed) this fails with one plain line and the way around it: a local config.json.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from urllib.parse import urlparse

from lowbit.errors import LowbitError
from lowbit.models.catalog import ResolvedModel, canonical
from lowbit.models.config import from_hf_config
from lowbit.safe_read import read_bounded, short

_REPO = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_OFFLINE = ("1", "true", "yes", "on")


HF_DEADLINE = 60.0  # seconds for the whole fetch, retries included
CONNECT_TIMEOUT = 5.0
MAX_CONFIG_BYTES = 16 << 20


def endpoint() -> tuple[str, str, int]:
    """(url, host, port) of the Hub: HF_ENDPOINT if set (checked: one line for a malformed one)."""
    url = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    try:
        parts = urlparse(url)
        port = parts.port
    except ValueError as e:  # "http://[::1", port 99999
        raise LowbitError(f"HF_ENDPOINT={short(url)} is not a valid URL: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LowbitError(f"HF_ENDPOINT={short(url)} is not an http(s) URL with a host")
    return url, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def fetch_config(repo_id: str, deadline: float | None = None) -> dict:
    """config.json of `repo_id` from the Hub, within `deadline` seconds (HF_DEADLINE) all told."""
    if not isinstance(repo_id, str) or not _REPO.match(repo_id) or ".." in repo_id:
        raise LowbitError(f"--hf wants ORG/NAME (e.g. Qwen/Qwen3.5-27B), got {short(repo_id)}")
    deadline = HF_DEADLINE if deadline is None else deadline
    way_around = "download its config.json yourself and pass that file instead"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in _OFFLINE:
        raise LowbitError(f"offline (HF_HUB_OFFLINE is set): cannot fetch {repo_id}/config.json; {way_around}")
    _, host, port = endpoint()
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise LowbitError(f"--hf needs the huggingface_hub package (pip install huggingface_hub); or {way_around}") \
            from None
    start = time.monotonic()
    try:  # one quick reachability check, so "offline" is one line, not a minute of retries
        socket.create_connection((host, port), timeout=min(CONNECT_TIMEOUT, deadline)).close()
    except (OSError, OverflowError, ValueError):
        raise LowbitError(f"offline: cannot reach {host} to fetch {repo_id}/config.json; {way_around}") from None

    result: dict = {}

    def download():
        try:
            from huggingface_hub.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
            result["path"] = hf_hub_download(repo_id, "config.json", etag_timeout=10)
        except BaseException as e:  # reported by the waiting thread
            result["error"] = e

    # huggingface_hub retries on its own; one deadline bounds all of it (a server that accepts and never
    # answers would otherwise hold the command for minutes). The thread is a daemon: it dies with the process.
    worker = threading.Thread(target=download, name="lowbit-hf-fetch", daemon=True)
    worker.start()
    worker.join(max(0.0, deadline - (time.monotonic() - start)))
    if worker.is_alive():
        raise LowbitError(f"the Hugging Face Hub ({host}) did not answer within {deadline:.0f} s for "
                          f"{repo_id}/config.json; {way_around}")
    if "error" in result:  # network, 404, gated repo: all become one line
        raise LowbitError(f"could not fetch {repo_id}/config.json from the Hugging Face Hub "
                          f"(offline, gated or missing: {type(result['error']).__name__}); {way_around}")
    raw = read_bounded(result["path"], MAX_CONFIG_BYTES, "config.json")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise LowbitError(f"{repo_id}/config.json is not valid JSON: {e}") from None


def resolve_hf(repo_id: str) -> ResolvedModel:
    return ResolvedModel(from_hf_config(fetch_config(repo_id), name=canonical(repo_id)), hf_id=repo_id)
