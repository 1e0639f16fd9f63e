"""The status page (issue 16, item 3) in a real headless Chromium against a live cluster.

Three real sites; site-a's admin API has tokens (the page takes the viewer token as the
password of HTTP Basic authentication), site-b's is open. A pending request carries a
``<script>`` in its reason: the rendered DOM shows it as text and no script element exists.
The page shows each site's live role and epoch (compared with ``GET /v1/status``). A
screenshot is kept under the test's tmp dir (``status-page-site-a.png``)."""

from __future__ import annotations

import base64
import html.parser
import random
import shutil
import struct
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from replicad.lab.localcluster import LocalCluster

from .browser import chromium_binary, dump_dom, screenshot
from .conftest import VOL, snapshot, write_image

pytestmark = pytest.mark.integration

TOKENS = {"ann": ("viewer", "viewer-token-abcdefghijklmnopqrstuvwxyz"),
          "ada": ("admin", "admin-token-abcdefghijklmnopqrstuvwxyz")}
EVIL = "<script>document.title='owned';document.body.innerHTML='owned'</script><img src=x onerror=alert(1)>"


class _Cells(html.parser.HTMLParser):
    """Rows of ``table#<id>`` as lists of cell texts; every start tag seen."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.tags: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.title = ""
        self._in_title = False
        self.tags_by_id: set[str] = set()
        self.text = ""

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append(tag)
        if dict(attrs).get("id"):
            self.tags_by_id.add(dict(attrs)["id"])
        if tag == "table":
            self._table = dict(attrs).get("id")
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag == "td" and self._table:
            self._cell = []
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag) -> None:
        if tag == "td" and self._cell is not None and self._table:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data) -> None:
        self.text += data
        if self._cell is not None:
            self._cell.append(data)
        if self._in_title:
            self.title += data


def _parse(dom: str) -> _Cells:
    p = _Cells()
    p.feed(dom)
    return p


@pytest.mark.timeout(120)
def test_status_page_in_chromium_shows_the_live_cluster_and_keeps_markup_inert(tmp_path: Path) -> None:
    chromium_binary()
    c = LocalCluster(tmp_path / "cluster", interval="1h", min_copies=2, tokens={"site-a": TOKENS})
    write_image(c.sites["site-a"].volume_path(VOL), 48, random.Random(3))
    with c:
        c.start_all()
        c.wait_ready(60)
        assert snapshot(c, "site-a")["committed"]
        req = c.api("site-a", "PUT", f"/v1/volumes/{VOL}/retention", {"retention": {"lock": "1s"}, "reason": EVIL})
        assert req["status"] == "pending"

        # no token: 401 with a Basic challenge, so that a browser asks for the token
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(c.sites["site-a"].admin_url + "/", timeout=10)
        assert err.value.code == 401 and err.value.headers["WWW-Authenticate"].startswith("Basic ")
        basic = "Basic " + base64.b64encode(f"ann:{TOKENS['ann'][1]}".encode()).decode()
        with urllib.request.urlopen(urllib.request.Request(c.sites["site-a"].admin_url + "/",
                                                           headers={"Authorization": basic}), timeout=10) as resp:
            assert resp.headers["Content-Type"].startswith("text/html")
            assert "script-src" not in resp.headers["Content-Security-Policy"]  # default-src 'none': no script
            assert "default-src 'none'" in resp.headers["Content-Security-Policy"]

        url_a = f"http://ann:{TOKENS['ann'][1]}@127.0.0.1:{c.sites['site-a'].admin_port}/"
        url_b = f"{c.sites['site-b'].admin_url}/"
        live = {s: c.status(s)["volumes"][VOL] for s in ("site-a", "site-b")}
        for site, url, role in (("site-a", url_a, "primary"), ("site-b", url_b, "replica")):
            dom = dump_dom(url)
            page = _parse(dom)
            assert page.title.startswith(f"replicad {site}"), page.title  # the title no script could change
            rows = {r[0]: r for r in page.tables["volumes"][1:]}
            assert rows[VOL][1] == role == live[site]["role"] and live[site]["confirmed"]
            assert rows[VOL][2] == "site-a" and rows[VOL][3] == str(live[site]["epoch"])
            assert rows[VOL][5] == f"#{live[site]['newest_clean']}"
            raft = page.tables["raft"][1]
            assert raft[2] == "yes" and raft[3] == "current"
            assert {r[0].split(" ")[0] for r in page.tables["sites"][1:]} == {"site-a", "site-b", "site-c"}
            # the request's reason is text, not markup: no script or img element, the text shown
            assert "script" not in page.tags and "img" not in page.tags
            reqs = {r[0]: r for r in page.tables["requests"][1:]}
            assert reqs[req["request"]][3] == EVIL
            assert "owned" not in page.title and "&lt;script&gt;" in dom

        shot = screenshot(url_a, tmp_path / "status-page-site-a.png")
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", data[16:24])
        assert (width, height) == (1280, 1000) and len(data) > 20_000
        print(f"status page screenshot: {shot}")


@pytest.mark.timeout(240)
def test_status_page_after_a_forced_promotion_and_with_an_open_export(tmp_path: Path) -> None:
    """site-a's snapshot #2 is suspect (text blocks replaced by random bytes); site-b is promoted
    with --force --snapshot 1 and takes the clean #3 on the new line: #2 is kept for forensics.
    site-b's page shows it as the primary with no standby (the catalog still names the standby
    it had as a replica), is not red for the superseded #2 (which it lists as kept), and lists an
    open export with its snapshot, connections, age, bytes read and idle limit. ``replicad
    status`` of site-b says healthy too (exit 0). A screenshot is kept
    (``status-page-promoted-site-b.png``)."""
    import json
    import subprocess
    import sys

    from .conftest import BLOCK

    chromium_binary()
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is not installed (qemu-utils; scripts/setup.sh): it reads the export")
    root = Path(tempfile.mkdtemp(prefix="rxp", dir="/tmp"))  # short: unix socket paths stay under 108 bytes
    c = LocalCluster(root / "c", interval="1h", min_copies=2)
    img = c.sites["site-a"].volume_path(VOL)
    write_image(img, 24, random.Random(21))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "replicad", "--admin", c.sites["site-b"].admin_url, *args],
                              capture_output=True, text=True, timeout=180)

    try:
        with c:
            c.start_all()
            c.wait_ready(60)
            good = snapshot(c, "site-a")
            with open(img, "r+b") as f:  # the attack: whole text blocks replaced by random bytes
                for b in (1, 4, 7, 10, 13, 16):
                    f.seek(b * BLOCK)
                    f.write(random.Random(b).randbytes(BLOCK))
            bad = snapshot(c, "site-a")
            assert (good["verdict"], bad["verdict"]) == ("clean", "suspect"), (good, bad)
            c.wait_for("site-b holds every snapshot", lambda: all(
                "site-b" in s["holders"] for s in c.api("site-b", "GET", f"/v1/volumes/{VOL}/snapshots")
                ["snapshots"]), 60)
            done = cli("promote", VOL, "--force", "--snapshot", str(good["seq"]))
            assert done.returncode == 0, done.stdout + done.stderr
            after = snapshot(c, "site-b")
            assert after["committed"] and after["verdict"] == "clean", after
            exp = c.api("site-b", "POST", f"/v1/volumes/{VOL}/exports", {"snapshot": after["seq"]})
            read = subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", exp["uri"],
                                   str(root / "copy.img")], capture_output=True, text=True, timeout=60)
            assert read.returncode == 0, read.stderr
            c.wait_for("site-b healthy", lambda: not c.status("site-b")["degraded_reasons"], 30)

            live = c.status("site-b")["volumes"][VOL]
            assert live["role"] == "primary" and live["confirmed"] and bad["seq"] in live["suspect"], live
            assert live["standby_seq"] == good["seq"]  # the catalog's record of its replica days
            page = _parse(dump_dom(f"{c.sites['site-b'].admin_url}/"))
            row = {r[0]: r for r in page.tables["volumes"][1:]}[VOL]
            assert row[1] == "primary" and row[2] == "site-b", row
            assert row[6] == "— (primary here)", row  # was "#1 verified": a standby it does not have
            assert row[5] == f"#{after['seq']}", row
            assert page.title == "replicad site-b: ok", page.title  # was ATTENTION for the kept #2
            assert "kept" in page.tags_by_id and f"#{bad['seq']} kept for forensics" in page.text
            exports = {r[0]: r for r in page.tables["exports"][1:]}
            cells = exports[exp["export_id"]]
            listed = {e["export_id"]: e for e in c.api("site-b", "GET", "/v1/exports")["exports"]}
            assert cells[1] == f"{VOL}#{after['seq']}" and cells[2] == "no" and cells[3] == "0", cells
            assert listed[exp["export_id"]]["bytes_read"] == 24 * BLOCK and cells[5] == "1.5 MiB", cells
            assert cells[6].endswith("/ 24.0 h"), cells
            st = cli("--json", "status")
            assert st.returncode == 0 and json.loads(st.stdout)["volumes"][VOL]["role"] == "primary", st.stderr
            shot = screenshot(f"{c.sites['site-b'].admin_url}/", tmp_path / "status-page-promoted-site-b.png")
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            print(f"status page screenshot: {shot}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
