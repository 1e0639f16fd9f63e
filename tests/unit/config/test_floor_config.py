"""The site's ``[floor]`` table (replicad.config.FloorConfig): defaults, limits, hard minimum."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from replicad.config import FloorConfig, load_config, parse_config
from replicad.core.errors import ConfigError
from replicad.core.floor import DEFAULT_FLOOR, FloorPolicy

CONFIG_DIR = Path(__file__).resolve().parents[3] / "config"


@pytest.fixture
def doc() -> dict[str, Any]:
    data = tomllib.loads((CONFIG_DIR / "site-a.toml").read_text(encoding="utf-8"))
    data["raft"] = {"bind": data["raft"]["bind"], "password": "correct-horse-battery-staple"}
    data.pop("floor", None)
    data["identity"] = {"unsafe_unsigned": True}  # no key file beside a dict (identity: test_identity_config)
    return data


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.problems


def test_defaults_come_from_the_floor_module(doc: dict[str, Any]) -> None:
    config = parse_config(doc)
    assert config.floor == FloorConfig()
    assert config.floor.policy() == DEFAULT_FLOOR


def test_a_floor_table_is_read(doc: dict[str, Any]) -> None:
    doc["floor"] = {"lock": "14d", "daily": 0, "weekly": 26, "monthly": 24}
    assert parse_config(doc).floor.policy() == FloorPolicy(lock_s=14 * 86400.0, daily=0, weekly=26, monthly=24)


@pytest.mark.parametrize(("table", "expected"), [
    ({"lock": "-1d"}, "floor.lock"),
    ({"lock": "11000d"}, "floor.lock"),
    ({"weekly": -1}, "floor.weekly"),
    ({"monthly": 121}, "floor.monthly"),
    ({"daily": 3661}, "floor.daily"),
    ({"daily": 1.5}, "floor.daily"),
    ({"weekly": True}, "floor.weekly"),
    ({"weeky": 13}, "floor.weeky: unknown key (did you mean 'weekly'?)"),
    ({"unsafe_allow_short_floor": "yes"}, "floor.unsafe_allow_short_floor"),
])
def test_bad_values_are_refused_with_their_key(doc: dict[str, Any], table: dict, expected: str) -> None:
    doc["floor"] = table
    found = problems(doc)
    assert len(found) == 1 and found[0].startswith(expected), found


def test_a_lock_below_one_day_needs_the_explicit_unsafe_switch(doc: dict[str, Any]) -> None:
    doc["floor"] = {"lock": "3s"}
    [problem] = problems(doc)
    assert problem.startswith("floor: lock (3s) is below the hard minimum of 1d")
    assert "unsafe_allow_short_floor = true" in problem
    doc["floor"] = {"lock": "3s", "unsafe_allow_short_floor": True, "daily": 0, "weekly": 0, "monthly": 0}
    assert parse_config(doc).floor.policy() == FloorPolicy(lock_s=3.0, daily=0, weekly=0, monthly=0)
    doc["floor"] = {"lock": "1d"}
    assert parse_config(doc).floor.lock_s == 86400.0


def test_the_samples_show_the_default_floor(sample_configs: Path) -> None:
    for name in ("site-a.toml", "site-b.toml", "site-c.toml"):
        assert load_config(sample_configs / name).floor.policy() == DEFAULT_FLOOR
