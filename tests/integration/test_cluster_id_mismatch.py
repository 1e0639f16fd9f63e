"""A ``cluster_id`` typo at one site is named as such (a tryout's finding): the signed Raft
handshake signs the cluster id, so the sites refuse each other as ``bad_identity`` exactly as they
would an impostor; replicad.site.clusterid then asks the refused site's peer API which cluster it
belongs to and logs, at ERROR, both ids, at the site with the typo and at the honest sites. The
handshake stays refused (authentication is not weakened): the site with the typo never joins."""

from __future__ import annotations

import re

import pytest

from replicad.lab.localcluster import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_a_cluster_id_typo_is_named_at_both_ends(tmp_path) -> None:
    c = LocalCluster(tmp_path / "c", min_copies=1)
    cfg = c.sites["site-c"].config_path
    text = cfg.read_text()
    assert f'cluster_id = "{c.cluster_id}"' in text
    cfg.write_text(text.replace(f'cluster_id = "{c.cluster_id}"', 'cluster_id = "other"'))
    try:
        c.start_all()
        good = re.escape(repr(c.cluster_id))

        def log(site: str) -> str:
            return c.sites[site].log_path.read_text(errors="replace")

        # the site with the typo: the others belong to the cluster its config does not name
        line_c = c.wait_for("site-c names the mismatch", lambda: re.search(
            r"ERROR .*cluster id mismatch: site site-[ab] answers that it belongs to cluster " + good
            + r" while this site's \(site-c\) config says cluster_id = 'other'.*", log("site-c")), 90)
        # an honest site: site-c answers another cluster, and the other honest site answers its own
        line_a = c.wait_for("site-a names the mismatch", lambda: re.search(
            r"ERROR .*cluster id mismatch: site site-c answers that it belongs to cluster 'other' while this "
            r"site's \(site-a\) config says cluster_id = " + good + r".*", log("site-a")), 90)
        assert "site-b answers" in line_a.group(0) and "site-c's config is most likely the one to fix" \
            in line_a.group(0), line_a.group(0)
        assert "not because of a key or an impostor" in line_c.group(0)
        assert re.search(r"site-[ab] answers " + good + " too, so this site's config is most likely the one to fix",
                         line_c.group(0)), line_c.group(0)
        # authentication is unchanged: site-c is still refused and never joined
        assert "bad_identity" in log("site-a") + log("site-b") + log("site-c")
        assert "site site-c registered" not in log("site-c")
        # at most one line a minute per site asked
        assert len(re.findall(r"cluster id mismatch: site site-c ", log("site-a"))) == 1
    finally:
        c.stop_all()
