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
import struct
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

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append(tag)
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
