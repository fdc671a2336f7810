"""Remote and split GGUF headers, against a real HTTP server this test starts on 127.0.0.1.

The server answers Range requests as real ones do (206 + Content-Range) and counts every byte it sends;
its hostile modes answer the ways a broken or malicious server could. Split files are written with the
`gguf` package (its split writer names and keys files as llama.cpp's gguf-split does).
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from lowbit.cli import main
from lowbit.errors import LowbitError
from lowbit.models import catalog, remote
from lowbit.models.catalog import resolve
from lowbit.planning.planner import plan

_RANGE = re.compile(r"^bytes=(\d+)-(\d+)?$")


class _Handler(BaseHTTPRequestHandler):
    server_version = "lowbit-test"

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: C901 - one branch per mode
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        mode = srv.mode
        if mode == "redirect-loop":
            return self._redirect(self.path + "x")
        if mode == "redirect-http-elsewhere":
            return self._redirect("http://example.com/m.gguf")
        if mode == "redirect-once" and not self.path.startswith("/moved/"):
            return self._redirect("/moved" + self.path)
        name = self.path.removeprefix("/moved").lstrip("/")
        name = name.split("/resolve/main/", 1)[-1] if "/resolve/main/" in name else name
        path = srv.root / name
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        if mode == "garbage":
            data = b"GGUF" + b"\xff" * (len(data) - 4)
        m = _RANGE.match(self.headers.get("Range") or "")
        if mode == "no-range" or not m:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self._send(data[: 1 << 16])  # a client that stops reading must not get the whole file
            return
        start = int(m.group(1))
        end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
        if start >= len(data):
            self.send_error(416)
            return
        body = data[start:end + 1]
        total = len(data) + (len(srv.requests) if mode == "size-changes" else 0)
        cr = f"bytes {start}-{end}/{total}"
        if mode == "wrong-range":
            cr = f"bytes {start + 1}-{end}/{total}"
        if mode == "gzip":
            body = gzip.compress(body)
        if mode == "slow":
            time.sleep(srv.delay)
        self.send_response(206)
        self.send_header("Content-Range", cr)
        if mode == "gzip":
            self.send_header("Content-Encoding", "gzip")
        if mode == "long":
            body += b"\0" * 1000
        length = len(body) if mode != "short" else len(body)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self._send(body[: len(body) // 2] if mode == "short" else body)

    def _send(self, body: bytes):
        try:
            self.wfile.write(body)
            self.server.sent += len(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _redirect(self, where: str):
        self.send_response(302)
        self.send_header("Location", where)
        self.send_header("Content-Length", "0")
        self.end_headers()


class Server:
    def __init__(self, root: Path):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.root, self.httpd.mode, self.httpd.delay = root, "", 0.0
        self.httpd.requests, self.httpd.sent = [], 0
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/{name}"

    def reset(self, mode: str = "", delay: float = 0.0):
        self.httpd.mode, self.httpd.delay = mode, delay
        self.httpd.requests, self.httpd.sent = [], 0
        catalog._remote.cache_clear()

    @property
    def sent(self) -> int:
        return self.httpd.sent

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _write_split(source: Path, out_dir: Path, shards: int) -> list[Path]:
    """Re-write a real GGUF as `shards` files with gguf's split writer (all metadata in the first)."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    r = GGUFReader(str(source))
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    per_file = -(-len(r.tensors) // shards)
    w = GGUFWriter(out_dir / source.name, arch, split_max_tensors=per_file)
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        vtype = f.types[0]
        if vtype == GGUFValueType.ARRAY:
            sub = f.types[-1]
            items = [bytes(f.parts[i]).decode("utf-8") if sub == GGUFValueType.STRING else f.parts[i].tolist()[0]
                     for i in f.data]
            w.add_key_value(f.name, items, vtype, sub_type=sub)
        elif vtype == GGUFValueType.STRING:
            w.add_key_value(f.name, bytes(f.parts[-1]).decode("utf-8"), vtype)
        else:
            w.add_key_value(f.name, f.parts[-1].tolist()[0], vtype)
    for t in r.tensors:
        w.add_tensor(t.name, np.asarray(t.data), raw_shape=np.asarray(t.data).shape, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    files = sorted(out_dir.glob(source.stem + "-*-of-*.gguf"))
    assert len(files) == shards
    return files


@pytest.fixture(scope="module")
def served(tmp_path_factory, smollm2_gguf, gemma3_gguf):
    root = tmp_path_factory.mktemp("served")
    shutil.copy(smollm2_gguf, root / smollm2_gguf.name)
    shutil.copy(gemma3_gguf, root / gemma3_gguf.name)
    split_dir = root / "split"
    split_dir.mkdir()
    _write_split(smollm2_gguf, split_dir, 3)
    srv = Server(root)
    yield srv, root
    srv.close()


def _files(p):
    return [f["name"] for f in p.origin["files"]]


# --- whole files --------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_a_served_gguf_plans_as_the_local_file_reading_only_its_header(served, which, smollm2_gguf, gemma3_gguf,
                                                                      capsys):
    srv, root = served
    local = {"smollm2": smollm2_gguf, "gemma3": gemma3_gguf}[which]
    srv.reset()
    mix = "Q4_1" if which == "smollm2" else "Q4_K_M"
    p = plan(srv.url(local.name), mix, context=1)
    q = plan(str(local), mix, context=1)
    assert p.to_json()["tensors"] == q.to_json()["tensors"] and p.file_bytes == q.file_bytes == local.stat().st_size
    header = resolve(str(local)).gguf.data_offset
    fetched = p.origin["fetched_bytes"]
    assert fetched == srv.sent  # what lowbit says it fetched is what the server sent
    assert header <= fetched < max(2 * header, remote.FIRST_RANGE) and fetched < local.stat().st_size / 10
    assert all(r is not None for _, r in srv.httpd.requests)  # only range requests
    assert f"fetched {fetched:,} bytes" in capsys.readouterr().err
    # planned again (other scenarios, fit, simulate): not fetched again
    plan(srv.url(local.name), "Q4_K_M", context=1)
    assert srv.sent == fetched


def test_hf_addresses_resolve_against_hf_endpoint(served, smollm2_gguf, monkeypatch):
    srv, _ = served
    srv.reset()
    monkeypatch.setenv("HF_ENDPOINT", srv.url("").rstrip("/"))
    p = plan(f"hf://HuggingFaceTB/SmolLM2-GGUF/{smollm2_gguf.name}", "Q4_1", context=1)
    assert srv.httpd.requests[0][0] == f"/HuggingFaceTB/SmolLM2-GGUF/resolve/main/{smollm2_gguf.name}"
    assert p.file_bytes == smollm2_gguf.stat().st_size
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LowbitError, match="offline"):
        resolve("hf://a/b/c.gguf")


def test_addresses_are_checked_before_any_request():
    for bad, msg in [("hf://only-owner/file.gguf", "hf://OWNER/REPO/FILE.gguf"),
                     ("http://example.com/m.gguf", "plain http"), ("https://example.com/m.bin", "does not name a .gguf"),
                     ("hf://a/b/../c.gguf", "hf://OWNER")]:
        with pytest.raises(LowbitError, match=msg):
            remote.url_of(bad)
    assert remote.url_of("http://[::1]:8/x.gguf") and remote.url_of("http://localhost:8/x.gguf")


# --- split files ----------------------------------------------------------------------------------------


def test_split_model_served_is_found_and_read_together(served, smollm2_gguf):
    srv, root = served
    srv.reset()
    names = sorted(p.name for p in (root / "split").glob("*.gguf"))
    assert names == [f"{smollm2_gguf.stem}-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    p = plan(srv.url(f"split/{names[1]}"), "Q4_1", context=1)  # any of the files names the model
    whole = plan(str(smollm2_gguf), "Q4_1", context=1)
    assert p.to_json()["tensors"] == whole.to_json()["tensors"]
    sizes = sum((root / "split" / n).stat().st_size for n in names)
    assert p.file_bytes == sizes and p.weights_bytes == whole.weights_bytes
    assert [Path(n).name for n in _files(p)] == names
    assert p.origin["fetched_bytes"] == srv.sent
    assert p.provenance()["gguf_header_bytes"].startswith("exact: read from its 3 files")
    headers = sum(f["header_bytes"] for f in p.origin["files"])
    assert p.header_bytes == headers and srv.sent < 2 * headers + 3 * remote.FIRST_RANGE


def test_split_model_on_disk(served, smollm2_gguf, tmp_path):
    _, root = served
    files = sorted((root / "split").glob("*.gguf"))
    p = plan(str(files[0]), "Q4_1", context=1)
    assert p.file_bytes == sum(f.stat().st_size for f in files)
    assert p.to_json()["tensors"] == plan(str(smollm2_gguf), "Q4_1", context=1).to_json()["tensors"]
    for f in files[:2]:
        shutil.copy(f, tmp_path / f.name)
    with pytest.raises(LowbitError, match="no such GGUF file: .*00003-of-00003"):
        resolve(str(tmp_path / files[0].name))
    shutil.copy(files[2], tmp_path / files[2].name)
    # a file renamed out of its split is refused, not planned as the whole model
    shutil.copy(files[0], tmp_path / "renamed.gguf")
    with pytest.raises(LowbitError, match="file 1 of 3 of a split model"):
        resolve(str(tmp_path / "renamed.gguf"))
    # files from two different splits: the numbering inside them is checked
    shutil.copy(files[0], tmp_path / files[1].name)
    with pytest.raises(LowbitError, match="expected 1"):
        resolve(str(tmp_path / files[0].name))


# --- limits and hostile answers ------------------------------------------------------------------------


@pytest.mark.parametrize("mode,message", [
    ("no-range", "ignores range requests"),
    ("wrong-range", "asked for bytes 0-"),
    ("long", "sent more"),
    ("short", "sent 131,072|broke off"),
    ("gzip", "gzip-encoded"),
    ("garbage", "implausible|unknown|truncated|malformed|version"),
    ("size-changes", "size changed"),
    ("redirect-loop", "redirect"),
    ("redirect-http-elsewhere", "plain http"),
])
def test_hostile_or_broken_servers_get_one_line_and_exit_2(served, smollm2_gguf, mode, message, capsys):
    srv, _ = served
    srv.reset(mode)
    assert main(["plan", srv.url(smollm2_gguf.name), "--context", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lowbit: error: ") and "\n" not in err and re.search(message, err), err
    assert srv.sent < 2 * remote.FIRST_RANGE + (1 << 16)  # nothing like the file was read


def test_redirects_are_followed_within_the_limit(served, smollm2_gguf):
    srv, _ = served
    srv.reset("redirect-once")
    p = plan(srv.url(smollm2_gguf.name), "Q4_1", context=1)
    assert p.file_bytes == smollm2_gguf.stat().st_size
    paths = [path for path, _ in srv.httpd.requests]
    assert paths[0] == f"/{smollm2_gguf.name}" and all(x.startswith("/moved/") for x in paths[1:])
    assert sum(1 for x in paths if not x.startswith("/moved/")) == 1  # later ranges go straight to the new address


def test_header_size_and_time_limits(served, gemma3_gguf, monkeypatch):
    srv, _ = served
    srv.reset()
    monkeypatch.setattr(remote, "MAX_HEADER_BYTES", 1 << 20)  # Gemma 3's header is 6.5 MB
    with pytest.raises(LowbitError, match="larger than 1,048,576 bytes"):
        resolve(srv.url(gemma3_gguf.name))
    assert srv.sent <= 1 << 20
    srv.reset("slow", delay=1.0)
    monkeypatch.setattr(remote, "TIME_LIMIT_S", 0.5)
    start = time.monotonic()
    with pytest.raises(LowbitError, match="no answer within|longer than"):
        resolve(srv.url(gemma3_gguf.name))
    assert time.monotonic() - start < 5


def test_missing_file_and_no_network(served):
    srv, _ = served
    srv.reset()
    with pytest.raises(LowbitError, match="HTTP 404"):
        resolve(srv.url("nothing-here.gguf"))
    # a loopback port nobody listens on: refused at once, as an unplugged network would be
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(LowbitError, match="cannot reach 127.0.0.1"):
        resolve(f"http://127.0.0.1:{port}/m.gguf")


def test_fit_and_simulate_take_a_remote_gguf(served, smollm2_gguf, capsys):
    srv, _ = served
    srv.reset()
    url = srv.url(smollm2_gguf.name)
    assert main(["fit", url, "--memory", "8GB", "--context", "4096", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["fits"] is True
    assert main(["simulate", "--models", url, "--scenario", "today", "--scenario", "q8=Q8_0+q8_0", "--context", "4096",
                 "--no-fits", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert len(rows) == 2 and rows[0]["model"] == smollm2_gguf.name
    sent = srv.sent
    assert sent < 2 * remote.FIRST_RANGE + resolve(str(smollm2_gguf)).gguf.data_offset  # one read for all of it
