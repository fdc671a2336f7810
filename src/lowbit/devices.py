"""The device catalog (data in devices.json) and memory budgets: what a workload may allocate.

A device has a vendor memory size (exact, from the spec sheet) and a *usable* size: what is left
after the operating system, driver or platform holds memory back. The usable size is always an
estimate, and `Budget.assumption` names it. `--memory 24GB` (SI) or `24GiB` (binary) gives a budget
with no device; it is taken as usable in full unless a device kind is named with it.

Each device also carries its peak memory bandwidth and matrix FLOP rate (vendor figures, with their
source) for the speed estimates. `this-cpu` is this machine as `lowbit devices --measure` measured it
(a device profile in the user cache: streaming bandwidth and f32 matrix rate of one thread, with numpy; and,
where torch sees CUDA GPUs, each GPU's copy bandwidth and bf16 matrix-product rate).
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from importlib import resources
from pathlib import Path

from lowbit.errors import LowbitError
from lowbit.models.local import cache_dir
from lowbit.safe_read import read_bounded
from lowbit.safe_write import write_text
from lowbit.safe_read import short

KINDS = ("phone", "apple", "gpu", "cpu")
UNIFIED = ("phone", "apple", "cpu")  # one memory pool for weights, cache and the host
_UNITS = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
MAX_MEMORY = 1 << 50  # 1 PiB: far beyond any one machine; guards absurd input


@dataclass(frozen=True)
class Device:
    name: str
    kind: str  # phone | apple | gpu | cpu
    klass: str  # phone | mac | consumer-gpu | datacenter-gpu | cpu
    label: str
    memory_bytes: int
    aliases: tuple[str, ...] = ()
    source: str = ""  # where memory_bytes comes from (the vendor's specification)
    bandwidth_bytes_s: float = 0.0  # peak memory bandwidth (0: unknown)
    flops: float = 0.0  # peak FLOP/s of the matrix path llama.cpp uses there (devices.json's _about says which)
    perf_source: str = ""  # where the two come from
    threads: int = 0  # CPU threads the figures are for (0: the whole device)

    @property
    def unified(self) -> bool:
        return self.kind in UNIFIED


@dataclass(frozen=True)
class Budget:
    """Memory a plan may use on one device (one GPU of `gpus` identical ones)."""

    memory_bytes: int  # vendor size (or what --memory said)
    usable_bytes: int
    assumption: str  # how usable_bytes was derived; "exact" only when nothing is held back
    device: Device | None = None
    gpus: int = 1
    unified: bool = True  # one pool (no separate host RAM for llama.cpp's CPU-side buffers)
    extras: dict = field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        return self.device.name if self.device else f"memory:{format_bytes(self.memory_bytes)}"


@lru_cache(maxsize=None)
def _raw() -> dict:
    return json.loads(resources.files("lowbit").joinpath("devices.json").read_text())


@lru_cache(maxsize=None)
def catalog() -> tuple[Device, ...]:
    return tuple(
        Device(d["name"], d["kind"], d["class"], d["label"], int(d["memory_bytes"]),
               tuple(d.get("aliases", ())), d["source"], float(d.get("bandwidth_bytes_s", 0)),
               float(d.get("flops", 0)), d.get("perf_source", ""))
        for d in _raw()["devices"]
    )


def reserve_rules() -> dict:
    return _raw()["reserve"]


def device(name: str) -> Device:
    key = str(name).strip().lower()
    if key == THIS_CPU:
        return this_cpu()
    for d in catalog():
        if key == d.name or key in d.aliases:
            return d
    near = [d.name for d in catalog() if key and (key in d.name or d.name in key)]
    hint = f" (did you mean {', '.join(near[:3])}?)" if near else ""
    raise LowbitError(f"unknown device {name!r}{hint}; `lowbit devices` lists them")


def usable(d: Device) -> tuple[int, str]:
    """Usable bytes of a catalog device and the assumption behind them."""
    rule = reserve_rules()[d.kind]
    if rule["kind"] == "bytes":
        return max(0, d.memory_bytes - int(rule["value"])), rule["why"]
    if rule["kind"] == "fraction":
        return int(d.memory_bytes * rule["value"]), rule["why"]
    frac = rule["large"] if d.memory_bytes > rule["large_from_bytes"] else rule["small"]
    return int(d.memory_bytes * frac), rule["why"]


def parse_memory(text: str | int) -> int:
    """'24GB' -> 24*10**9, '24GiB' -> 24*2**30, '1.5TiB', '512MiB'. A unit is required."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        s = str(text).strip().replace("_", "").replace(" ", "")
        m = re.fullmatch(r"([+-]?\d+(?:\.\d+)?)([a-zA-Z]+)", s)
        if not m:
            if re.fullmatch(r"[+-]?\d+(\.\d+)?", s):
                raise LowbitError(f"memory {short(text)} needs a unit, e.g. 24GB (10^9 bytes) or 24GiB (2^30 bytes)")
            raise LowbitError(f"cannot read memory size {short(text)}; write e.g. 24GB or 24GiB")
        number, unit = m.groups()
        unit = unit.lower()
        if unit in ("k", "m", "g", "t"):
            raise LowbitError(f"memory unit {m.group(2)!r} is ambiguous; write {number}{m.group(2).upper()}B "
                              f"(10^n bytes) or {number}{m.group(2).upper()}iB (2^n bytes)")
        if unit not in _UNITS:
            raise LowbitError(f"unknown memory unit {m.group(2)!r}; use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB")
        if len(number) > 24:  # a float of that many digits would overflow; no machine is that large
            raise LowbitError(f"memory {short(text)} is beyond any machine (limit 1 PiB)")
        value = int(Fraction(number) * _UNITS[unit])  # exact
        if Fraction(number) < 0:
            value = -1
    if value <= 0:
        raise LowbitError(f"memory must be positive, got {short(text)}")
    if value > MAX_MEMORY:
        raise LowbitError(f"memory {short(text)} is beyond any machine (limit 1 PiB)")
    return value


def budget(device_name: str | None = None, memory: str | int | None = None, gpus: int = 1) -> Budget:
    """The budget of one device of `gpus` identical ones: from the catalog or from a size."""
    if isinstance(gpus, bool) or not isinstance(gpus, int) or not 1 <= gpus <= 64:
        raise LowbitError(f"--gpus must be an integer from 1 to 64, got {gpus!r}")
    if device_name and memory is not None:
        raise LowbitError("give either --device or --memory, not both")
    if device_name:
        d = device(device_name)
        if gpus > 1 and d.kind != "gpu":
            raise LowbitError(f"--gpus {gpus} splits a model over GPUs; {d.name} is not a GPU ({d.kind})")
        use, why = usable(d)
        return Budget(d.memory_bytes, use, why, d, gpus, unified=d.unified)
    if memory is None:
        raise LowbitError("a memory budget is needed: --device NAME (see `lowbit devices`) or --memory 24GB")
    size = parse_memory(memory)
    return Budget(size, size, "exact: the --memory given, all of it usable (nothing held back)", None, gpus,
                  unified=gpus == 1)


def format_bytes(n: int) -> str:
    """Binary units, 2 decimals: 25769803776 -> '24.00 GiB'."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def listing() -> list[dict]:
    """The catalog as rows (for `lowbit devices` and JSON)."""
    rows = []
    for d in catalog():
        use, why = usable(d)
        rows.append({"name": d.name, "kind": d.kind, "class": d.klass, "label": d.label,
                     "memory_bytes": d.memory_bytes, "usable_bytes": use, "usable_assumption": why,
                     "aliases": list(d.aliases), "source": d.source})
    return rows


# ---------------------------------------------------------------------------------------------
# This machine: a measured device profile
# ---------------------------------------------------------------------------------------------

THIS_CPU = "this-cpu"
PROFILE_FILE = "device-profile.json"
PROFILE_VERSION = 1


def profile_path() -> Path:
    """device-profile.json in the lowbit cache ($LOWBIT_CACHE, else ~/.cache/lowbit), beside the eval models."""
    return cache_dir() / PROFILE_FILE


def _measure_here(quick: bool = False) -> dict:
    """Measure in this process, which should run one BLAS thread (see `measure`).

    CPU time, not wall time, is the clock: on a shared machine wall time measures the share the scheduler
    gives, CPU time what one core does while it runs. The best of several passes is kept.
    """
    import numpy as np  # numpy is a dependency; imported here so the catalog loads without it

    size = (16 if quick else 512) << 20  # bytes per array: well past the caches in the full run
    n_mat = 256 if quick else 1024
    passes = 3 if quick else 5
    a = np.ones(size // 8)
    b = np.empty_like(a)
    np.copyto(b, a)  # touch both arrays once (page faults are not bandwidth)

    def best(fn, work: float) -> float:
        rates = []
        for _ in range(passes):
            t0 = time.process_time()
            fn()
            dt = time.process_time() - t0
            if dt > 0:
                rates.append(work / dt)
        return max(rates) if rates else 0.0

    read = best(lambda: a.sum(), a.nbytes)  # one streaming read
    copy = best(lambda: np.copyto(b, a), 2 * a.nbytes)  # STREAM's copy convention: read + write
    x = np.random.default_rng(0).standard_normal((n_mat, n_mat), dtype=np.float32)
    y = np.random.default_rng(1).standard_normal((n_mat, n_mat), dtype=np.float32)
    x @ y  # warm the BLAS
    flops = best(lambda: x @ y, 2.0 * n_mat**3)
    return {"read_bandwidth_bytes_s": read, "copy_bandwidth_bytes_s": copy, "flops": flops,
            "array_bytes": int(a.nbytes), "matrix": n_mat, "passes": passes, "numpy": np.__version__}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 0


def _cuda_present() -> bool:
    """A CUDA driver and torch are both there, found without importing torch (seconds) on machines without."""
    import importlib.util

    driver = Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia").exists()
    return driver and importlib.util.find_spec("torch") is not None


def measure_cuda(quick: bool = False) -> list[dict]:
    """Each visible CUDA GPU: streaming copy bandwidth (a device-to-device copy of a large random float32 array,
    bytes read + written), streaming read (a sum over it) and the dense bf16 matrix-product rate (n x n x n on
    random inputs), each the median of repeats timed with CUDA events after a warm-up. [] without CUDA."""
    if not _cuda_present():
        return []
    import torch  # lazy: only a machine with a CUDA driver gets here

    if not torch.cuda.is_available():
        return []
    size = (64 if quick else 2048) << 20  # bytes per array: far past the 50-60 MB L2 of current GPUs
    n = 2048 if quick else 8192
    reps = 5 if quick else 20
    out = []
    for i in range(torch.cuda.device_count()):
        dev = torch.device("cuda", i)
        with torch.cuda.device(dev):
            gen = torch.Generator(device=dev).manual_seed(i)
            a = torch.randn(size // 4, device=dev, generator=gen)
            b = torch.empty_like(a)
            x = torch.randn(n, n, device=dev, dtype=torch.bfloat16, generator=gen)
            y = torch.randn(n, n, device=dev, dtype=torch.bfloat16, generator=gen)

            def median_s(fn) -> float:
                for _ in range(3):
                    fn()
                times = []
                for _ in range(reps):
                    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    e0.record()
                    fn()
                    e1.record()
                    e1.synchronize()
                    times.append(e0.elapsed_time(e1) / 1e3)
                return sorted(times)[len(times) // 2]

            copy = 2 * a.nbytes / median_s(lambda: b.copy_(a))
            read = a.nbytes / median_s(lambda: a.sum())
            flops = 2.0 * n**3 / median_s(lambda: torch.mm(x, y))
            props = torch.cuda.get_device_properties(dev)
            out.append({"index": i, "name": props.name, "memory_bytes": int(props.total_memory),
                        "multiprocessors": props.multi_processor_count,
                        "copy_bandwidth_bytes_s": copy, "read_bandwidth_bytes_s": read, "bf16_matmul_flops": flops,
                        "array_bytes": int(a.nbytes), "matrix": n, "repeats": reps, "torch": torch.__version__,
                        "cuda": torch.version.cuda})
            del a, b, x, y
        torch.cuda.empty_cache()
    return out


def measure(quick: bool = False, timeout: float = 120.0) -> dict:
    """Measure this machine: streaming read and copy bandwidth and the f32 matrix FLOP rate of one thread.

    The measurement runs in a child Python with every BLAS pinned to one thread (a BLAS that spins its
    own threads would make CPU time meaningless). Returns the profile `save_profile` stores.
    """
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               VECLIB_MAXIMUM_THREADS="1", PYTHONPATH=os.pathsep.join(
                   [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    code = f"import json; from lowbit.devices import _measure_here; print(json.dumps(_measure_here({quick!r})))"
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LowbitError(f"the device measurement took longer than {timeout:.0f} s") from None
    if r.returncode:
        raise LowbitError("the device measurement failed: " + (r.stderr.strip().splitlines() or ["?"])[-1])
    figures = json.loads(r.stdout.strip().splitlines()[-1])
    return {
        "version": PROFILE_VERSION, "name": THIS_CPU, "cpu": _cpu_model(), "logical_cpus": os.cpu_count() or 1,
        "memory_bytes": _memory_bytes(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg": list(load) if load else None, "threads": 1, "quick": quick, **figures,
        "method": "numpy in a child process with one BLAS thread; CPU time (process_time), best of several passes: "
                  "a.sum() over a float64 array (read), np.copyto (copy: read + write), float32 matmul (2n^3 FLOP)",
        "gpus": measure_cuda(quick),
        "gpu_method": "torch on each visible CUDA GPU, CUDA events, median of repeats after 3 warm-ups, random "
                      "inputs: copy_ of a float32 array (copy: read + write), its sum (read), bf16 n x n x n torch.mm "
                      "(2n^3 FLOP)",
    }


def save_profile(profile: dict, path: Path | None = None) -> Path:
    """Write the profile whole or not at all (lowbit.safe_write), replacing an earlier measurement."""
    path = path or profile_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, json.dumps(profile, indent=1) + "\n", force=True)


def load_profile(path: Path | None = None) -> dict | None:
    """The stored profile, or None when there is none; a damaged one is an error naming the file."""
    path = path or profile_path()
    if not path.exists():
        return None
    try:
        p = json.loads(read_bounded(path, 1 << 20, "device profile"))
        for key in ("read_bandwidth_bytes_s", "flops", "logical_cpus"):
            if not float(p[key]) > 0:
                raise ValueError(key)
    except (ValueError, KeyError, TypeError) as e:
        raise LowbitError(f"{path} is not a device profile lowbit can read ({e}); run `lowbit devices --measure` "
                          "again") from None
    return p


def this_cpu(threads: int | None = None, profile: dict | None = None) -> Device:
    """This machine from its measured profile; `threads` (default: every logical CPU) scales the one-thread
    figures linearly, an estimate named in perf_source."""
    p = profile or load_profile()
    if p is None:
        raise LowbitError(f"{THIS_CPU} has not been measured; run `lowbit devices --measure` first")
    n = int(threads or p["logical_cpus"])
    if not 1 <= n <= 4096:
        raise LowbitError(f"threads must be from 1 to 4096, got {threads!r}")
    src = (f"measured on this machine {p.get('measured_at', '?')} ({p.get('method', 'numpy')}): one thread "
           f"{p['read_bandwidth_bytes_s'] / 1e9:.1f} GB/s read, {p['flops'] / 1e9:.1f} GFLOP/s f32 matmul"
           + (f"; x {n} threads, scaled linearly (estimate)" if n > 1 else ""))
    return Device(THIS_CPU, "cpu", "cpu", f"this machine: {p.get('cpu', '?')}", int(p.get("memory_bytes") or 0),
                  (), "measured: this machine's physical memory", float(p["read_bandwidth_bytes_s"]) * n,
                  float(p["flops"]) * n, src, n)
