"""A brand-new cluster's log (a tryout's finding): the founding each site joins is not called
history "committed before this site first joined", and the registration of a volume exactly as
this site's config names it is INFO, not a WARNING about another site's command (a volume
registered otherwise still is: the unit of ``_as_configured`` below). Real daemons."""

from __future__ import annotations

import re

import pytest

from replicad.lab.localcluster import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_a_new_cluster_founds_and_registers_without_warnings(tmp_path) -> None:
    c = LocalCluster(tmp_path / "c", min_copies=1)
    try:
        for site in ("site-b", "site-c"):  # these two found the cluster and join; site-a registers ehr after
            c.start(site)
        for site in ("site-b", "site-c"):
            c.wait_for(f"{site} registered", lambda s=site: "registered in the cluster" in
                       c.sites[s].log_path.read_text(errors="replace"), 60)
        c.start("site-a")
        for site in ("site-b", "site-c"):
            text = c.wait_for(f"{site} logged the registration", lambda s=site: (
                lambda t: t if "add_volume of volume ehr by site-a" in t else None)(
                c.sites[s].log_path.read_text(errors="replace")), 30)
            line = next(x for x in text.splitlines() if "add_volume of volume ehr by site-a" in x)
            assert " INFO " in line and "as this site's config [[volumes]] names it" in line, line
            assert "committed before this site first joined) the cluster is founded" not in text
            assert re.search(r"AUDIT the cluster is founded under rules", text), text[-3000:]
    finally:
        c.stop_all()


def test_a_volume_registered_otherwise_than_configured_is_not_expected(tmp_path) -> None:
    from replicad.config import load_config
    from replicad.site.daemon import SiteDaemon

    c = LocalCluster(tmp_path / "c", min_copies=1)
    d = SiteDaemon(load_config(c.sites["site-b"].config_path).model_copy(update={"data_dir": tmp_path / "d"}))
    v = d.cfg.volumes[0]
    ok = {"op": "add_volume", "volume": v.name, "by": "site-a", "primary": "site-a", "block_size": v.block_size_bytes}
    assert d._as_configured(ok)
    assert not d._as_configured({**ok, "by": "site-c", "primary": "site-c"})  # another primary than configured
    assert not d._as_configured({**ok, "block_size": v.block_size_bytes * 2})
    assert not d._as_configured({**ok, "volume": "other"})
