"""`--hf ORG/NAME`: fetch one config.json from the Hugging Face Hub, only when asked.

Nothing else in lowbit touches the network. Offline (HF_HUB_OFFLINE set, no connection, or no
huggingface_hub installed) this fails with one plain line and the way around it: a local config.json.
"""

from __future__ import annotations

import json
import os
import re
import socket
from urllib.parse import urlparse

from lowbit.errors import LowbitError
from lowbit.models.catalog import ResolvedModel, canonical
from lowbit.models.config import from_hf_config

_REPO = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_OFFLINE = ("1", "true", "yes", "on")


def fetch_config(repo_id: str) -> dict:
    if not _REPO.match(repo_id or "") or ".." in repo_id:
        raise LowbitError(f"--hf wants ORG/NAME (e.g. Qwen/Qwen3.5-27B), got {repo_id!r}")
    way_around = "download its config.json yourself and pass that file instead"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in _OFFLINE:
        raise LowbitError(f"offline (HF_HUB_OFFLINE is set): cannot fetch {repo_id}/config.json; {way_around}")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise LowbitError(f"--hf needs the huggingface_hub package (pip install huggingface_hub); or {way_around}") \
            from None
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:  # one quick reachability check, so "offline" is one line, not a minute of retries
        socket.create_connection((endpoint.hostname or "huggingface.co", endpoint.port or 443), timeout=5).close()
    except OSError:
        raise LowbitError(f"offline: cannot reach {endpoint.hostname} to fetch {repo_id}/config.json; {way_around}") \
            from None
    try:
        from huggingface_hub.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        path = hf_hub_download(repo_id, "config.json", etag_timeout=10)
    except Exception as e:  # network, 404, gated repo: all become one line
        raise LowbitError(f"could not fetch {repo_id}/config.json from the Hugging Face Hub "
                          f"(offline, gated or missing: {type(e).__name__}); {way_around}") from None
    try:
        with open(path, "rb") as f:
            return json.loads(f.read(16 << 20))
    except (OSError, ValueError) as e:
        raise LowbitError(f"{repo_id}/config.json is not valid JSON: {e}") from None


def resolve_hf(repo_id: str) -> ResolvedModel:
    return ResolvedModel(from_hf_config(fetch_config(repo_id), name=canonical(repo_id)), hf_id=repo_id)
