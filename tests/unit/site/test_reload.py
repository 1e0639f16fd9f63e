"""Pure parts of replicad.site.reload: what a configuration reload (SIGHUP) applies live."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from replicad.config import parse_config
from replicad.site.reload import live_config, reload_plan
from replicad.core.errors import ConfigError


def _doc(sample_configs: Path, name: str = "site-a.toml") -> dict:
    return tomllib.loads((sample_configs / name).read_text())


def test_a_reload_applies_what_it_can_and_keeps_what_needs_a_restart(sample_configs: Path) -> None:
    old = parse_config(_doc(sample_configs), base_dir=sample_configs)
    doc = _doc(sample_configs)
    doc["data_dir"] = "/var/lib/replicad/elsewhere"       # needs a restart
    doc["peer"]["listen"] = "127.0.0.1:7209"               # needs a restart
    doc["sites"][0]["peer_url"] = "http://127.0.0.1:7209"
    doc["log_level"] = "debug"                              # live
    doc["volumes"][0]["interval"] = "30m"                   # live
    doc["volumes"][0]["block_size"] = "128KiB"              # needs a restart
    doc["volumes"].append({**doc["volumes"][0], "name": "pacs", "path": "/var/lib/replicad/pacs.img"})
    new = parse_config(doc, base_dir=sample_configs)
    safe, unsafe = reload_plan(old, new)
    assert safe == ["log_level", "volumes[ehr].interval_s"]
    assert unsafe == ["data_dir", "peer_listen", "sites", "volumes[pacs] added or removed",
                      "volumes[ehr].block_size_bytes"]
    live = live_config(old, new)
    assert live.log_level == "debug" and live.volume("ehr").interval_s == 1800
    assert (live.data_dir, live.peer_listen, live.sites) == (old.data_dir, old.peer_listen, old.sites)
    assert live.volume("ehr").block_size_bytes == old.volume("ehr").block_size_bytes
    assert [v.name for v in live.volumes] == ["ehr"]
    assert reload_plan(old, live) == (safe, [])


def test_a_reload_whose_live_part_is_invalid_alone_is_refused(sample_configs: Path) -> None:
    # every token removed, and admin.listen back to loopback: the listen address needs a restart,
    # so applying the token removal alone would open the API on every interface without a token
    old = parse_config(_doc(sample_configs, "site-a-tokens.toml"), base_dir=sample_configs)
    new = parse_config(_doc(sample_configs), base_dir=sample_configs)
    safe, unsafe = reload_plan(old, new)
    assert "admin_tokens" in safe and "admin_listen" in unsafe
    with pytest.raises(ConfigError) as info:
        live_config(old, new)
    assert any(p.startswith("admin.listen: '0.0.0.0:7301' is not a loopback address") for p in info.value.problems)
