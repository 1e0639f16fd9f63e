"""A volume's Raft registration against this site's config (site/registration.py): what differs,
when the volume is held, and that each registration is judged (logged, gauged) once."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Gauge

from replicad.config import VolumeConfig
from replicad.site.registration import RegistrationCheck, must_hold, registration_problems

CFG = VolumeConfig.model_validate({"name": "pacs", "path": "pacs.img", "block_size": "64KiB", "min_copies": 2,
                                   "initial_primary": "site-a"})
HONEST = {"primary": "site-a", "epoch": 1, "block_size": 65536, "min_copies": 2, "registered_by": "site-a"}
SQUAT = {**HONEST, "primary": "site-c", "registered_by": "site-c", "block_size": 4096, "min_copies": 1}


def test_problems_name_each_difference() -> None:
    assert registration_problems(CFG, HONEST) == []
    assert registration_problems(CFG, {k: v for k, v in HONEST.items() if k != "registered_by"}) == []  # older record
    assert registration_problems(CFG, SQUAT) == [
        "registered by site-c, not by its initial_primary site-a (this config)",
        "block_size 4096 (this config: 65536)", "min_copies 1 (this config: 2)"]


def test_held_where_acting_would_harm_this_sites_data() -> None:
    squat_same_size = {**HONEST, "primary": "site-c", "registered_by": "site-c"}
    assert must_hold(CFG, squat_same_size, "site-a")  # it would become a standby of its own live volume
    assert not must_hold(CFG, squat_same_size, "site-b")  # a replica elsewhere: logged only
    assert must_hold(CFG, {**HONEST, "block_size": 4096}, "site-b")  # nothing would fit
    assert not must_hold(CFG, {**HONEST, "min_copies": 3}, "site-a")
    assert not must_hold(CFG, {**HONEST, "primary": "site-b"}, "site-a")  # a failover since: its own registration


def test_each_registration_is_judged_once(caplog) -> None:
    gauge = Gauge("mismatch", "test", ["site", "volume"], registry=CollectorRegistry())
    check = RegistrationCheck("site-a", gauge)
    with caplog.at_level(logging.ERROR, logger="replicad.site.registration"):
        assert check.held(CFG, SQUAT) and check.held(CFG, SQUAT)
    [record] = caplog.records
    assert "(by site-c)" in record.getMessage() and "HOLDS the volume" in record.getMessage()
    assert gauge.labels("site-a", "pacs")._value.get() == 1
    assert not check.held(CFG, HONEST)  # the registration changed (a new cluster): judged again
    assert gauge.labels("site-a", "pacs")._value.get() == 0 and len(caplog.records) == 1


def test_a_file_volume_is_registered_with_its_image_size(tmp_path, caplog) -> None:
    import asyncio

    from replicad.site.registration import registered_size_bytes

    image = tmp_path / "pacs.img"
    image.write_bytes(b"\1" * 3 * 65536)
    assert asyncio.run(registered_size_bytes(CFG.model_copy(update={"path": image}))) == 3 * 65536
    with caplog.at_level(logging.WARNING, logger="replicad.site.registration"):  # a directory: no size, no raise
        assert asyncio.run(registered_size_bytes(CFG.model_copy(update={"path": tmp_path}))) == 0
    assert "registered without a size" in caplog.text, caplog.text
