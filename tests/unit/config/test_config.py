"""Tests of replicad.config: the sample configs, every rule, all problems at once."""

from __future__ import annotations

import copy
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from replicad.config import (
    SiteConfig,
    SiteRef,
    VolumeConfig,
    load_config,
    parse_config,
    split_host_port,
)
from replicad.core.errors import ConfigError, NotFoundError

CONFIG_DIR = Path(__file__).resolve().parents[3] / "config"
VALID_SAMPLES = sorted(CONFIG_DIR.glob("*.toml"))
INVALID_SAMPLES = sorted((CONFIG_DIR / "invalid").glob("*.toml"))
PASSWORD = "correct-horse-battery-staple"


def _expectation(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} lacks its '# expect:' first line"
    return first.removeprefix("# expect: ")


def _copy_key(src: Path, dst: Path) -> None:
    """A sample site key where a copied sample config names it, mode 0600."""
    dst.write_bytes(src.read_bytes())
    dst.chmod(0o600)


def _problems(data: dict[str, Any], base_dir: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=base_dir)
    return info.value.problems


@pytest.fixture
def doc() -> dict[str, Any]:
    """A valid three-site document (site-a), password given inline."""
    data = tomllib.loads((CONFIG_DIR / "site-a.toml").read_text(encoding="utf-8"))
    data["raft"] = {"bind": data["raft"]["bind"], "password": PASSWORD}
    data["identity"] = {"unsafe_unsigned": True}  # no key file beside a dict (identity: own tests)
    return data


# --------------------------------------------------------------------------- samples


def test_samples_are_present() -> None:
    names = {path.name for path in VALID_SAMPLES}
    assert {"site-a.toml", "site-b.toml", "site-c.toml", "witness.toml"} <= names
    invalid = {path.stem for path in INVALID_SAMPLES}
    assert {
        "unknown-key", "bad-size-unit", "block-size-not-power-of-two", "duplicate-site-id",
        "primary-not-a-site", "missing-password", "bad-port", "toml-syntax-error",
    } <= invalid


@pytest.mark.parametrize("path", VALID_SAMPLES, ids=lambda p: p.name)
def test_valid_sample_loads(path: Path, sample_configs: Path) -> None:
    config = load_config(sample_configs / path.name)
    assert config.self_ref().site_id == config.site_id
    assert config.raft_bind == config.self_ref().raft
    assert config.raft_password.get_secret_value() == (CONFIG_DIR / "demo-raft.key").read_text().strip()


@pytest.mark.parametrize("path", INVALID_SAMPLES, ids=lambda p: p.name)
def test_invalid_sample_fails_with_its_expected_problem(path: Path, sample_configs: Path) -> None:
    expected = _expectation(path)
    with pytest.raises(ConfigError) as info:
        load_config(sample_configs / "invalid" / path.name)
    problems = info.value.problems
    assert any(expected in problem for problem in problems), problems
    # Each sample holds exactly one mistake: no cascade of follow-up problems.
    assert len(problems) == 1, problems


def test_three_site_samples_describe_one_cluster(sample_configs: Path) -> None:
    configs = [load_config(sample_configs / f"site-{x}.toml") for x in "abc"]
    assert [c.site_id for c in configs] == ["site-a", "site-b", "site-c"]
    assert configs[0].sites == configs[1].sites == configs[2].sites
    for n, config in enumerate(configs, start=1):
        assert config.raft_bind == f"127.0.0.1:710{n}"
        assert config.peer_listen == f"127.0.0.1:720{n}"
        assert config.admin_listen == f"127.0.0.1:730{n}"
        assert config.data_dir == Path(f"/var/lib/replicad/{config.site_id}")
        volume = config.volume("ehr")
        assert volume.path.is_relative_to(config.data_dir)
        assert volume.block_size_bytes == 64 * 1024
        assert volume.interval_s == 10.0
        assert volume.retention.keep_all_s == 86400.0
        assert [p.site_id for p in config.peers()] == [s for s in ("site-a", "site-b", "site-c") if s != config.site_id]
    # Everything but the local image path agrees between the sites.
    assert len({c.volume("ehr").model_copy(update={"path": Path("/x")}) for c in configs}) == 1


def test_witness_sample(sample_configs: Path) -> None:
    config = load_config(sample_configs / "witness.toml")
    assert config.is_witness
    assert config.volumes == ()
    assert [s.site_id for s in config.data_sites()] == ["site-a", "site-b"]


# --------------------------------------------------------------------------- all problems at once


def test_three_problems_are_reported_at_once(tmp_path: Path) -> None:
    text = (CONFIG_DIR / "site-a.toml").read_text(encoding="utf-8")
    text = text.replace('log_level = "info"', 'log_level = "info"\ncolour = "blue"')   # unknown key
    text = text.replace('listen = "127.0.0.1:7201"', 'listen = "127.0.0.1:0"')        # bad port
    text = text.replace('initial_primary = "site-a"', 'initial_primary = "site-z"')   # not a site
    (tmp_path / "demo-raft.key").write_text(PASSWORD + "\n")
    (tmp_path / "demo-raft.key").chmod(0o600)
    _copy_key(CONFIG_DIR / "demo-identity-site-a.key", tmp_path / "demo-identity-site-a.key")
    path = tmp_path / "site.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problems = info.value.problems
    assert len(problems) == 3, problems
    assert any(p.startswith("colour: unknown key") for p in problems)
    assert any(p.startswith("peer.listen: port 0 ") for p in problems)
    assert any(p.startswith("volumes[0].initial_primary: 'site-z' is not a site") for p in problems)
    assert info.value.exit_code == 2
    assert info.value.to_dict()["evidence"]["problems"] == problems


def test_cross_field_problems_reported_alongside_field_problems(doc: dict[str, Any]) -> None:
    doc["sites"][2]["kind"] = "witnes"                   # field problem: this entry is invalid
    doc["sites"][1]["raft"] = doc["sites"][0]["raft"]    # cross problem among valid entries
    doc["volumes"][0]["initial_primary"] = "nowhere"     # cross problem: all ids still known
    doc["volumes"][0]["block_size"] = "48KiB"
    doc["volumes"].append({"name": "pacs", "path": "/srv/pacs.img", "initial_primary": "elsewhere"})
    problems = _problems(doc)
    assert "sites[2].kind: input should be 'data' or 'witness'" in problems
    assert "sites[1].raft: duplicate '127.0.0.1:7101' (also sites[0])" in problems
    assert any(p.startswith("volumes[0].block_size: 48KiB") for p in problems)
    assert any(p.startswith("volumes[1].initial_primary: 'elsewhere' is not a site") for p in problems)
    # volumes[0] is invalid (block_size), but its initial_primary is valid on its own: its cross
    # rule is still checked (issue 16: one wrong field must not hide the other problems)
    assert any(p.startswith("volumes[0].initial_primary: 'nowhere' is not a site") for p in problems)


def test_problems_carry_no_secret(doc: dict[str, Any]) -> None:
    doc["raft"]["password"] = "tooshort-secret"
    problems = _problems(doc)
    assert problems == ["raft.password: must be at least 16 characters"]
    doc["raft"]["password"] = PASSWORD
    config = parse_config(doc)
    assert PASSWORD not in repr(config) and PASSWORD not in str(config)


# --------------------------------------------------------------------------- model behaviour


def test_model_is_frozen(doc: dict[str, Any]) -> None:
    config = parse_config(doc)
    with pytest.raises(ValidationError):
        config.site_id = "site-b"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        config.volumes[0].retention.lock_s = 0.0  # type: ignore[misc]
    with pytest.raises(ValidationError):
        config.sites[0].kind = "witness"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.volumes[0:0] = ()  # type: ignore[index]


def test_accessors(doc: dict[str, Any]) -> None:
    config = parse_config(doc)
    assert config.self_ref() == SiteRef(
        site_id="site-a", raft="127.0.0.1:7101", peer_url="http://127.0.0.1:7201", admin_url="http://127.0.0.1:7301",
        public_key=doc["sites"][0]["public_key"],
    )
    assert [p.site_id for p in config.peers()] == ["site-b", "site-c"]
    assert not config.is_witness
    assert config.volume("ehr").name == "ehr"
    with pytest.raises(NotFoundError) as info:
        config.volume("pacs")
    assert info.value.evidence == {"volume": "pacs", "known": ["ehr"]}


def test_defaults_when_keys_are_left_out(doc: dict[str, Any]) -> None:
    doc["volumes"] = [{"name": "ehr", "path": "/srv/ehr.img", "initial_primary": "site-b"}]
    del doc["log_level"]
    config = parse_config(doc)
    volume = config.volume("ehr")
    assert volume.block_size_bytes == 65536
    assert volume.interval_s == 10.0
    assert volume.min_copies == 2
    assert volume.apply_delay_s == 0.0
    assert volume.standby is True
    assert volume.source.kind == "file" and volume.source.pre_snapshot == ()
    assert (volume.retention.keep_all_s, volume.retention.hourly_s) == (86400.0, 7 * 86400.0)
    assert (volume.retention.daily_s, volume.retention.lock_s) == (30 * 86400.0, 86400.0)
    assert (volume.anomaly.min_score, volume.anomaly.factor) == (0.02, 4.0)
    assert config.log_level == "info" and config.lab is False and config.tls is None


def test_units_in_values(doc: dict[str, Any]) -> None:
    doc["volumes"][0].update(block_size="1MiB", interval="1m30s", apply_delay="15m")
    doc["volumes"][0]["retention"] = {"keep_all": "12h", "hourly": "2d", "daily": "90d", "lock": 3600}
    doc["volumes"][0]["source"] = {"pre_snapshot": ["fsfreeze", "-f", "/mnt/ehr"]}
    doc["log_level"] = "DEBUG"
    config = parse_config(doc)
    volume = config.volume("ehr")
    assert (volume.block_size_bytes, volume.interval_s, volume.apply_delay_s) == (1024**2, 90.0, 900.0)
    assert volume.retention.keep_all_s == 43200.0 and volume.retention.lock_s == 3600.0
    assert volume.source.pre_snapshot == ("fsfreeze", "-f", "/mnt/ehr")
    assert config.log_level == "debug"


def test_field_names_are_accepted_but_not_twice(doc: dict[str, Any]) -> None:
    del doc["volumes"][0]["block_size"]
    doc["volumes"][0]["block_size_bytes"] = 8192
    assert parse_config(copy.deepcopy(doc)).volume("ehr").block_size_bytes == 8192
    doc["volumes"][0]["block_size"] = "8KiB"
    assert _problems(doc) == [
        "volumes[0].block_size_bytes: given twice, as 'block_size' and 'block_size_bytes'; keep 'block_size'"
    ]


def test_flat_field_names_are_not_toml_keys(doc: dict[str, Any]) -> None:
    doc["peer_listen"] = "127.0.0.1:7201"
    doc["raft"]["bnd"] = "x"
    assert sorted(_problems(doc)) == [
        "peer_listen: unknown key (write it as peer.listen)",
        "raft.bnd: unknown key (did you mean 'bind'?)",
    ]


def test_direct_construction_validates_cross_fields() -> None:
    site = SiteRef(site_id="a", raft="h:1", peer_url="http://h:2/", admin_url="http://h:3")
    assert site.peer_url == "http://h:2"
    fields = dict(site_id="a", data_dir=Path("/d"), raft_bind="h:1", raft_password=PASSWORD,
                  peer_listen="h:2", admin_listen="127.0.0.1:3", sites=[site], identity={"unsafe_unsigned": True})
    assert SiteConfig(**fields, lab=True).peers() == ()
    with pytest.raises(ValidationError, match="at least 3 voting sites"):
        SiteConfig(**fields)
    volume = VolumeConfig(name="v", path=Path("/v.img"), initial_primary="a", block_size_bytes=4096, min_copies=1)
    assert SiteConfig(**fields, lab=True, volumes=[volume]).volume("v").block_size_bytes == 4096


# --------------------------------------------------------------------------- paths and secrets


def test_relative_paths_resolve_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    (conf_dir / "keys").mkdir()
    (conf_dir / "keys" / "raft.key").write_text(f"  {PASSWORD}\n\n")
    (conf_dir / "keys" / "raft.key").chmod(0o600)
    _copy_key(CONFIG_DIR / "demo-identity-site-a.key", conf_dir / "keys" / "site.key")
    text = (CONFIG_DIR / "site-a.toml").read_text(encoding="utf-8")
    text = text.replace('key_file = "demo-identity-site-a.key"', 'key_file = "keys/site.key"')
    text = text.replace('data_dir = "/var/lib/replicad/site-a"', 'data_dir = "state"')
    text = text.replace('password_file = "demo-raft.key"', 'password_file = "keys/raft.key"')
    text = text.replace('path = "/var/lib/replicad/site-a/ehr.img"', 'path = "../images/ehr.img"')
    (conf_dir / "site.toml").write_text(text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(Path("../etc/site.toml"))
    assert config.data_dir.resolve() == conf_dir / "state"
    assert config.volume("ehr").path.resolve() == tmp_path / "images" / "ehr.img"
    assert config.raft_password.get_secret_value() == PASSWORD
    assert config.identity.key_file.resolve() == conf_dir / "keys" / "site.key"


def test_password_rules(doc: dict[str, Any], tmp_path: Path) -> None:
    key = tmp_path / "raft.key"
    key.write_text(PASSWORD)
    key.chmod(0o600)
    both = copy.deepcopy(doc)
    both["raft"]["password_file"] = str(key)
    assert _problems(both) == ["raft: give exactly one of password and password_file, not both"]
    from_file = copy.deepcopy(doc)
    from_file["raft"] = {"bind": "127.0.0.1:7101", "password_file": "raft.key"}
    assert parse_config(from_file, base_dir=tmp_path).raft_password.get_secret_value() == PASSWORD
    key.write_text("short\n")
    assert _problems(from_file, base_dir=tmp_path) == ["raft.password_file: must be at least 16 characters"]
    key.write_text("\n")
    assert _problems(from_file, base_dir=tmp_path) == [f"raft.password_file: {key} is empty"]
    if os.geteuid() != 0:  # root reads anything
        key.write_text(PASSWORD)
        key.chmod(0)
        assert _problems(from_file, base_dir=tmp_path)[0].startswith("raft.password_file: cannot read")


def test_a_raft_key_that_group_or_others_can_access_is_refused(doc: dict[str, Any], tmp_path: Path) -> None:
    key = tmp_path / "raft.key"
    key.write_text(PASSWORD)
    from_file = copy.deepcopy(doc)
    from_file["raft"] = {"bind": "127.0.0.1:7101", "password_file": "raft.key"}
    for mode in (0o644, 0o640, 0o620, 0o604, 0o602, 0o660):
        key.chmod(mode)
        assert _problems(from_file, base_dir=tmp_path) == [
            f"raft.password_file: {key} is accessible by group or others (mode {mode:04o}); it holds the "
            f"cluster's Raft password: chmod 600 {key}"]
    for mode in (0o600, 0o400):
        key.chmod(mode)
        assert parse_config(from_file, base_dir=tmp_path).raft_password.get_secret_value() == PASSWORD


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.toml")
    assert info.value.problems == [f"file: cannot read {tmp_path / 'absent.toml'}: No such file or directory"]
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'site_id = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert info.value.problems[0].startswith("toml: ") and "UTF-8" in info.value.problems[0]
    bad.write_text("site_id = \n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert info.value.problems[0].startswith("toml: invalid TOML syntax") and "line 1" in info.value.problems[0]


def test_tls_section(doc: dict[str, Any], tmp_path: Path) -> None:
    https = copy.deepcopy(doc)
    for site in https["sites"]:
        site["peer_url"] = site["peer_url"].replace("http://", "https://")
    assert _problems(https) == ["tls: peer URLs use https:// but no [tls] table gives the certificate files"]
    for name in ("site.crt", "site.key", "ca.crt"):
        (tmp_path / name).write_text("PEM")
    https["tls"] = {"cert_file": "site.crt", "key_file": "site.key", "ca_file": "ca.crt"}
    config = parse_config(https, base_dir=tmp_path)
    assert config.tls is not None and config.tls.ca_file == tmp_path / "ca.crt"
    doc["tls"] = {"cert_file": "site.crt", "key_file": "missing.key", "ca_file": "ca.crt"}
    assert _problems(doc, base_dir=tmp_path) == [
        f"tls.key_file: cannot read {tmp_path / 'missing.key'}",
        "sites: with [tls] set, every peer_url must use https://",
    ]


# --------------------------------------------------------------------------- individual rules


def _witness(site: dict[str, Any]) -> dict[str, Any]:
    return {**site, "kind": "witness"}


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.update(site_id="site-x"), "site_id: 'site-x' is not listed in [[sites]]"),
        (lambda d: d["sites"][2].update(peer_url=d["sites"][0]["peer_url"]), "sites[2].peer_url: duplicate"),
        (lambda d: d["sites"][2].update(admin_url=d["sites"][1]["admin_url"]), "sites[2].admin_url: duplicate"),
        (lambda d: d.update(sites=d["sites"][:2]), "sites: 2 site(s) listed"),
        (lambda d: d["sites"].__setitem__(1, _witness(d["sites"][1])) or d["sites"].__setitem__(2, _witness(d["sites"][2])),
         "sites: 1 data site(s) listed"),
        (lambda d: d["sites"].__setitem__(1, _witness(d["sites"][1])) or d["volumes"][0].update(initial_primary="site-b"),
         "volumes[0].initial_primary: 'site-b' is a witness"),
        (lambda d: d["volumes"][0].update(min_copies=0), "volumes[0].min_copies: input should be greater than or equal to 1"),
        (lambda d: d["volumes"][0].update(min_copies=4), "volumes[0].min_copies: 4 is more than the 3 data site(s)"),
        (lambda d: d["volumes"][0].update(min_copies="2"), "volumes[0].min_copies: input should be a valid integer"),
        (lambda d: d["volumes"][0].update(block_size="2KiB"), "volumes[0].block_size: 2KiB is outside 4KiB..4MiB"),
        (lambda d: d["volumes"][0].update(block_size="8MiB"), "volumes[0].block_size: 8MiB is outside 4KiB..4MiB"),
        (lambda d: d["volumes"][0].update(interval="10ms"), "volumes[0].interval: 10ms is too short"),
        (lambda d: d["volumes"][0].update(name="../etc"), "volumes[0].name: '../etc' is not a valid name"),
        (lambda d: d["volumes"][0].update(name="x" * 65), "is not a valid name"),
        (lambda d: d["volumes"][0].update(path=""), "volumes[0].path: must not be empty"),
        (lambda d: d["volumes"][0].update(path="~/ehr.img"), "volumes[0].path: '~' is not expanded"),
        (lambda d: d["volumes"].append({**d["volumes"][0], "name": "copy"}), "volumes[1].path: same path as volumes[0]"),
        (lambda d: d["volumes"][0]["anomaly"].update(min_score=1.5), "volumes[0].anomaly.min_score: input should be less than or equal to 1"),
        (lambda d: d["volumes"][0]["source"].update(kind="nbd"), "volumes[0].source.kind: input should be 'file'"),
        (lambda d: d["volumes"][0]["source"].update(pre_snapshot="fsfreeze -f /mnt"), "volumes[0].source.pre_snapshot: expected an array"),
        (lambda d: d["volumes"][0].update(standby="yes"), "volumes[0].standby: input should be a valid boolean"),
        (lambda d: d["volumes"][0].update(blocksize="4KiB"), "volumes[0].blocksize: unknown key (did you mean 'block_size'?)"),
        (lambda d: d["sites"][0].update(peer_url="ftp://127.0.0.1:7201"), "sites[0].peer_url: 'ftp://127.0.0.1:7201' must start with http:// or https://"),
        (lambda d: d["sites"][0].update(admin_url="http://u:p@127.0.0.1:7301"), "must not carry credentials"),
        (lambda d: d["sites"][0].update(raft="127.0.0.1"), "sites[0].raft: '127.0.0.1' is not 'host:port'"),
        (lambda d: d["raft"].update(bind="127.0.0.1:7109"), "raft.bind: '127.0.0.1:7109' differs from this site's raft address"),
        (lambda d: d["peer"].update(listen="127.0.0.1:7209"), "peer.listen: port of '127.0.0.1:7209' differs from this site's URL"),
        (lambda d: d["admin"].update(listen="127.0.0.1:http"), "admin.listen: port 'http' in '127.0.0.1:http' is not a number"),
        (lambda d: d["admin"].update(listen="127.0.0.1:65536"), "admin.listen: port 65536 in '127.0.0.1:65536' is out of range 1..65535"),
        (lambda d: d.update(log_level="loud"), "log_level: 'loud' is not one of debug, info, warning, error, critical"),
        (lambda d: d.update(lab="yes"), "lab: input should be a valid boolean"),
        (lambda d: d.update(raft="127.0.0.1:7101"), "raft: must be a table ([raft])"),
        (lambda d: d.pop("sites"), "sites: required key is missing"),
        (lambda d: d.update(volumes={"name": "ehr"}), "volumes: expected an array"),
        (lambda d: d["volumes"][0]["retention"].update(hourly="1d", daily="12h"), "volumes[0].retention: hourly (1d) must not exceed daily (12h)"),
    ],
)
def test_rule(doc: dict[str, Any], mutate: Any, expected: str) -> None:
    mutate(doc)
    problems = _problems(doc)
    assert any(expected in problem for problem in problems), problems


def test_listen_collision_on_wildcard(doc: dict[str, Any]) -> None:
    doc["raft"]["bind"] = "127.0.0.1:7101"
    doc["sites"][0]["admin_url"] = "http://127.0.0.1:7201"
    doc["admin"]["listen"] = "0.0.0.0:7201"
    doc["admin"]["tokens"] = [{"name": "t", "role": "admin", "sha256": "0" * 64}]  # not loopback: tokens needed
    assert _problems(doc) == ["admin.listen: '0.0.0.0:7201' collides with peer.listen '127.0.0.1:7201'"]


def test_two_data_sites_and_a_witness_is_enough(doc: dict[str, Any]) -> None:
    doc["sites"][2]["kind"] = "witness"
    doc["volumes"][0]["min_copies"] = 2
    config = parse_config(doc)
    assert [s.site_id for s in config.data_sites()] == ["site-a", "site-b"]


def test_lab_allows_a_single_site(doc: dict[str, Any]) -> None:
    doc["sites"] = doc["sites"][:1]
    doc["volumes"][0]["min_copies"] = 1
    assert _problems(copy.deepcopy(doc))[0].startswith("sites: 1 site(s) listed")
    doc["lab"] = True
    assert parse_config(doc).peers() == ()


def test_a_short_withheld_watch_is_a_test_bench_setting(doc: dict[str, Any]) -> None:
    assert parse_config(copy.deepcopy(doc)).raft_withheld_after_s is None  # the daemon keeps raft's 45 s
    doc["raft"]["withheld_after"] = "20s"
    assert _problems(copy.deepcopy(doc)) == [
        "raft.withheld_after: a test bench setting (production uses 45s); set lab = true"]
    doc["lab"] = True
    assert parse_config(copy.deepcopy(doc)).raft_withheld_after_s == 20.0
    for short_or_long in ("19s", "11min"):
        doc["raft"]["withheld_after"] = short_or_long
        assert [p for p in _problems(copy.deepcopy(doc)) if p.startswith("raft.withheld_after")], short_or_long


def test_ipv6_addresses(doc: dict[str, Any]) -> None:
    doc["raft"]["bind"] = "[::1]:7101"
    doc["sites"][0].update(raft="[::1]:7101", peer_url="http://[::1]:7201", admin_url="http://[::1]:7301")
    doc["peer"]["listen"] = "[::]:7201"
    doc["admin"]["listen"] = "[::1]:7301"
    assert parse_config(doc).self_ref().raft == "[::1]:7101"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:7101", ("127.0.0.1", 7101)), ("db-1.example.org:1", ("db-1.example.org", 1)),
     ("[::1]:65535", ("::1", 65535))],
)
def test_split_host_port(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text) == expected


@pytest.mark.parametrize("text", ["7101", ":7101", "host:", "host:0", "host:65536", "::1:7101", "[::1]7101",
                                  "[zz]:1", "bad_host:1", "host:-1"])
def test_split_host_port_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        split_host_port(text)


def test_volume_detection_sets_the_initial_mode(doc: dict[str, Any]) -> None:
    assert parse_config(doc).volume("ehr").detection.mode is None  # not set: the cluster's default policy
    doc["volumes"][0]["detection"] = {"mode": "encrypted"}
    assert parse_config(doc).volume("ehr").detection.mode == "encrypted"
    doc["volumes"][0]["detection"] = {"mode": "luks"}
    with pytest.raises(ConfigError, match=r"volumes\[0\]\.detection\.mode"):
        parse_config(doc)
    doc["volumes"][0]["detection"] = {"min_score": 0.01}  # thresholds belong to [volumes.anomaly]
    with pytest.raises(ConfigError, match=r"volumes\[0\]\.detection\.min_score"):
        parse_config(doc)
