"""CLI pieces of instant recovery (issue 16, item 1): ``promote --instant`` without
``--force`` is refused before any request is sent; what ``promote --instant`` and ``status``
print about it."""

from __future__ import annotations

import subprocess
import sys

from replicad.cli import _instant_line

STATE = {"volume": "ehr", "epoch": 2, "seq": 1, "root": "ab", "phase": "copying", "resumed": False,
         "export_id": "instant-ehr", "socket": "/d/nbd/instant-ehr.sock",
         "uri": "nbd+unix:///?socket=/d/nbd/instant-ehr.sock", "progress": 0.5, "copy_done_blocks": 80,
         "copy_total_blocks": 160, "overlay_blocks": 3, "serving_after_s": 0.1, "first_read_after_s": 0.3,
         "copy_after_s": None, "switched_after_s": None, "last_error": "open restore target: Operation not permitted"}


def test_promote_instant_needs_force() -> None:
    res = subprocess.run([sys.executable, "-m", "replicad", "--admin", "http://127.0.0.1:9", "promote", "ehr",
                          "--to", "site-b", "--instant"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--force" in res.stderr, res.stderr


def test_status_line_of_each_phase() -> None:
    line = _instant_line("ehr", STATE)
    assert "copying, copy 50 % (80/160 blocks)" in line and "/d/nbd/instant-ehr.sock" in line
    assert "last error: open restore target" in line and "first read after 0.30 s" in line
    done = _instant_line("ehr", {**STATE, "phase": "done", "switched_after_s": 4.2})
    assert "switched over after 4.20 s (3 blocks copied in)" in done and "last error" not in done
    assert "export is closed" in _instant_line("ehr", {**STATE, "phase": "fenced"})
    assert "first read after -" in _instant_line("ehr", {**STATE, "first_read_after_s": None})


def test_promote_instant_prints_what_is_served_not_a_restore(capsys) -> None:
    from replicad import cli

    res = {"volume": "ehr", "primary": "site-b", "epoch": 3, "restored_seq": 7, "rto_s": 0.76, "ready": True,
           "restore": {"pinned": True}, "instant": {**STATE, "seq": 7, "phase": "copying", "serving_after_s": 0.4}}
    with cli.console.capture() as cap:
        cli._render_promote(res)
    out = cap.get()
    assert "restored snapshot" not in out and "the one named" not in out and "root verified" not in out, out
    assert "serves snapshot #7 of ehr" in out and "on /d/nbd/instant-ehr.sock" in out
    assert "being written in the background" in out and "switch-over is not done yet" in out
    assert "replicad status" in out


import json as _json  # noqa: E402
import os as _os  # noqa: E402
import signal as _signal  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402

import pytest  # noqa: E402


def _interrupted_promote(grant: bool) -> str:
    """Run ``replicad promote ehr --force --instant`` against a stub site whose promote request
    never answers (granted meanwhile or not), Ctrl-C it once the request arrived: its stderr."""
    view = {"epoch": 2, "primary": None}
    arrived, release = threading.Event(), threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def _send(self, body: dict) -> None:
            data = _json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            inst = {**STATE, "epoch": 3, "uri": "nbd+unix:///?socket=/d/nbd/instant-ehr.sock"} \
                if view["epoch"] == 3 else None
            self._send({"site_id": "site-b", "volumes": {"ehr": {**view, "instant": inst}}})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if grant:
                view.update(epoch=3, primary="site-b")
            arrived.set()
            release.wait(30)  # the site goes on with the takeover; the client gives up first

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    p = subprocess.Popen([sys.executable, "-m", "replicad", "--admin", f"http://127.0.0.1:{server.server_address[1]}",
                          "promote", "ehr", "--force", "--instant"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=dict(_os.environ, COLUMNS="200"))
    try:
        assert arrived.wait(60), "the promote request never arrived"
        time.sleep(0.2)  # the client is inside its request
        p.send_signal(_signal.SIGINT)  # by PID: the process this test started
        _, err = p.communicate(timeout=60)
        assert p.returncode == 130, (p.returncode, err)
        return err
    finally:
        release.set()
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
        server.shutdown()
        server.server_close()


@pytest.mark.timeout(120)
def test_ctrl_c_during_promote_says_whether_the_takeover_started() -> None:
    err = " ".join(_interrupted_promote(grant=True).split())
    assert "the promotion was granted (site-b is primary of ehr at epoch 3)" in err, err
    assert "goes on at site-b" in err and "instant recovery copying" in err and "instant-ehr.sock" in err
    err = " ".join(_interrupted_promote(grant=False).split())
    assert "nothing was granted yet" in err and "epoch 2" in err and "before retrying" in err, err
