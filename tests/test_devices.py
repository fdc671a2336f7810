"""The device catalog and memory budgets: data integrity, units, and one-line errors."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from lowbit.cli import main
from lowbit.devices import budget, catalog, device, parse_memory, usable
from lowbit.errors import LowbitError

LISTED_DEVICES = {  # name -> vendor "GB" from the vendors' lists (memory chips are binary-sized: GiB)
    "phone-8gb": 8, "phone-12gb": 12, "phone-16gb": 16, "rtx-3060": 12, "rtx-4060-ti-16gb": 16,
    "rtx-5060-ti-16gb": 16, "rtx-4090": 24, "rtx-5090": 32, "a100-40gb": 40, "a100-80gb": 80, "h100-80gb": 80,
    "h200-141gb": 141, "b200-180gb": 180, "mi300x-192gb": 192, "m4-max-64gb": 64,
}


def test_catalog_holds_the_issue_devices_with_vendor_memory():
    for name, gb in LISTED_DEVICES.items():
        assert device(name).memory_bytes == gb * 2**30, name
    kinds = {d.kind for d in catalog()}
    assert kinds == {"phone", "apple", "gpu", "cpu"}


def test_names_are_unique_lowercase_slugs():
    names = [n for d in catalog() for n in (d.name, *d.aliases)]
    assert len(names) == len(set(names))
    for n in names:
        assert n == n.lower() and " " not in n and n.replace("-", "").replace(".", "").isalnum()


def test_every_reserve_rule_names_its_assumption():
    raw = json.loads(resources.files("lowbit").joinpath("devices.json").read_text())
    for kind, rule in raw["reserve"].items():
        assert rule["why"].startswith("estimated:"), kind
    assert "recommendedMaxWorkingSetSize" in raw["_about"]["sources"]["apple wired limit"]


def test_usable_memory_per_kind():
    assert usable(device("rtx-4090"))[0] == 23 * 2**30  # 1 GiB held back
    assert usable(device("m4-16gb"))[0] == int(16 * 2**30 * 2 / 3)  # macOS default GPU working set
    assert usable(device("m4-max-64gb"))[0] == 48 * 2**30  # 3/4 above 36 GiB
    assert usable(device("cpu-16gb"))[0] == 12 * 2**30
    assert device("laptop-16gb") == device("cpu-16gb")


@pytest.mark.parametrize("text, expected", [
    ("24GB", 24 * 10**9), ("24GiB", 24 * 2**30), ("1.5TiB", 3 * 2**39), ("512 MiB", 512 * 2**20), ("24gb", 24 * 10**9),
])
def test_parse_memory_units(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["-5GB", "0GB", "24", "24G", "24 parsecs", "", "9999999TiB"])
def test_parse_memory_rejects_bad_sizes(text):
    with pytest.raises(LowbitError):
        parse_memory(text)


def test_budget_from_memory_is_all_usable_and_exact():
    b = budget(memory="24GiB")
    assert b.usable_bytes == b.memory_bytes == 24 * 2**30 and b.assumption.startswith("exact")


@pytest.mark.parametrize("argv, needle", [
    (["fit", "qwen3.5-27b", "--device", "rtx-9999"], "unknown device"),
    (["fit", "qwen3.5-27b", "--memory=-24GB"], "memory must be positive"),
    (["fit", "qwen3.5-27b", "--memory", "24"], "needs a unit"),
    (["fit", "qwen3.5-27b"], "a memory budget is needed"),
    (["fit", "qwen3.5-27b", "--device", "rtx-4090", "--memory", "24GB"], "either --device or --memory"),
    (["fit", "qwen3.5-27b", "--device", "m4-16gb", "--gpus", "2"], "not a GPU"),
    (["fit", "qwen3.5-27b", "--device", "rtx-4090", "--gpus", "0"], "--gpus"),
])
def test_bad_budgets_are_one_line_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_devices_command_lists_the_catalog(capsys):
    assert main(["devices", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["devices"]
    assert {r["name"] for r in rows} == {d.name for d in catalog()}
    assert all(0 < r["usable_bytes"] < r["memory_bytes"] for r in rows)
    assert main(["devices", "--kind", "gpu"]) == 0
    out = capsys.readouterr().out
    assert "rtx-4090" in out and "phone-8gb" not in out
