"""Drills: recovery drills with evidence (issue 16, item 5).

A drill restores a committed snapshot (default: the newest clean one) into a new image under
a sandbox directory while replication goes on (:meth:`Recovery.drill`, root verified, O5),
then checks the restored image:

* **file-system check**: ``e2fsck -fn`` (read-only, forced) when the image holds ext2/3/4 (the
  superblock magic ``0xEF53`` at byte 1080); anything else is reported "not checked" with the
  reason (no ext superblock, e2fsck not installed);
* **application check**: the volume's ``[volumes.drill] check`` command, if configured, with
  ``{image}`` replaced by the image path and ``check_timeout`` (killed after it);

and writes a **report** (:mod:`replicad.core.drillreport`): volume, snapshot, measured RPO (age
of the restored snapshot when the drill started, against the RPO target of 3 intervals) and
RTO (restore + root verification), both checks, who ran it (the admin token's name and role)
and when, signed by this site's key. The HTML report is kept under
``<data_dir>/drills/<volume>/`` and returned to the caller (``replicad drill`` writes it where
the operator asks). The image is deleted after the checks unless ``keep``.

A drill **passes** when the root verified, the file-system check passed or could not apply,
and the application check passed or is not configured. The time of the newest passed drill
per volume is kept in ``<data_dir>/drills/last-success.json`` (survives restarts) and exported
as ``replicad_drill_last_success_timestamp_seconds`` (0: never at this site).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from replicad.config import SiteConfig
from replicad.core import drillreport
from replicad.core.errors import NotFoundError, from_os_error
from replicad.core.identity import Signer
from replicad.site.cluster import Cluster
from replicad.site.operations import Operation
from replicad.site.recovery import Recovery
from replicad.storage.durable import write_durably
from replicad.telemetry.metrics import SiteMetrics

log = logging.getLogger("replicad.site.drills")

EXT_MAGIC_OFFSET = 1080          # s_magic of the ext2/3/4 superblock (1024 + 56)
EXT_MAGIC = b"\x53\xef"          # 0xEF53, little-endian
OUTPUT_TAIL_CHARS = 4000         # of a check's combined stdout/stderr kept in the report
LAST_SUCCESS_FILE = "last-success.json"


def _utc(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(timespec="seconds")


def holds_ext(image: Path) -> bool:
    """True if ``image`` has the ext2/3/4 superblock magic at byte 1080. OSError propagates."""
    with open(image, "rb") as f:
        f.seek(EXT_MAGIC_OFFSET)
        return f.read(2) == EXT_MAGIC


async def run_check(argv: list[str], timeout_s: float, env: dict[str, str] | None = None) -> dict:
    """Run ``argv`` (no shell, stdin closed, stdout+stderr captured) for at most ``timeout_s``.

    Returns ``{"ok", "returncode", "seconds", "timed_out", "output_tail", "reason"}``; never
    raises for the command's own failure (a command that cannot start: ok false, reason)."""
    t0 = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env={**os.environ, **(env or {})})
    except OSError as err:
        return {"ok": False, "returncode": None, "seconds": 0.0, "timed_out": False, "output_tail": "",
                "reason": f"could not start {argv[0]!r}: {err.strerror or err}"}
    timed_out = False
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        timed_out = True
        proc.kill()
        out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:  # cancelled: never leave the check running
            proc.kill()
            await proc.wait()
    text = (out or b"").decode("utf-8", "replace")[-OUTPUT_TAIL_CHARS:]
    ok = not timed_out and proc.returncode == 0
    reason = (f"timed out after {timeout_s:g} s (killed)" if timed_out
              else None if ok else f"exited with {proc.returncode}")
    return {"ok": ok, "returncode": proc.returncode, "seconds": round(time.monotonic() - t0, 3),
            "timed_out": timed_out, "output_tail": text, "reason": reason}


class Drills:
    """Recovery drills with a signed report.

    Args:
        cluster: Raft view (the snapshot's record, the cluster id).
        cfg: returns the site's current configuration (``[volumes.drill]``, intervals).
        data_dir: the site's data dir (reports are kept under ``drills/``).
        recovery: restores and verifies the drill image.
        signer: this site's key (None: unsigned lab mode; the report then says UNSIGNED).
        metrics: ``replicad_drill_*``.
    """

    def __init__(self, cluster: Cluster, cfg: Callable[[], SiteConfig], data_dir: Path, recovery: Recovery,
                 signer: Signer | None, metrics: SiteMetrics) -> None:
        self.site_id = cluster.site_id
        self.cluster = cluster
        self.cfg = cfg
        self.dir = Path(data_dir) / "drills"
        self.recovery = recovery
        self.signer = signer
        self.metrics = metrics
        self._last_success = self._load_last_success()
        for volume, ts in self._last_success.items():
            metrics.drill_finished(volume, True, ts, count=False)

    def last_success(self) -> dict[str, float]:
        """``{volume: unix seconds}`` of the newest passed drill at this site."""
        return dict(self._last_success)

    def _load_last_success(self) -> dict[str, float]:
        try:
            doc = json.loads((self.dir / LAST_SUCCESS_FILE).read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            log.error("drills: cannot read %s (%s): the last drill success restarts from none",
                      self.dir / LAST_SUCCESS_FILE, err)
            return {}
        return {str(k): float(v) for k, v in doc.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def _keep(self, volume: str, report: dict, html_text: str, passed_at: float | None) -> Path:
        """Write the report under ``drills/<volume>/`` (and the last success), fsynced."""
        d = self.dir / volume
        d.mkdir(parents=True, exist_ok=True)
        name = f"{report['started_at'].replace(':', '')}-{volume}-{report['snapshot']['seq']}.html"
        path = d / name
        write_durably(path, html_text.encode("utf-8"))
        if passed_at is not None:
            self._last_success[volume] = passed_at  # fsynced too (it was renamed unsynced: empty after a crash)
            write_durably(self.dir / LAST_SUCCESS_FILE, json.dumps(self._last_success, sort_keys=True).encode())
        return path

    async def run(self, volume: str, seq: int | None, sandbox: Path, keep: bool = False, *,
                  who: tuple[str, str] = ("anonymous", "admin"), op: Operation | None = None) -> dict:
        """Drill ``volume`` (snapshot ``seq``, default the newest clean) into ``sandbox``.

        Args:
            who: ``(token name, role)`` of the caller, written into the report.
            op: the operation whose phase/progress to update (``restoring`` → ``checking``).

        Returns:
            the restore report of :meth:`Recovery.drill` plus ``outcome`` (passed | failed: a
            check failed, or the snapshot is judged suspect, which is no recovery point),
            ``report`` (the signed map), ``signature`` (base64 or None), ``html`` (the report
            file's text) and ``report_path`` (where this site keeps it).

        Raises:
            like :meth:`Recovery.restore` (the restore or its O5 check failed: no report);
            a report that cannot be kept raises the typed OSError class.
        """
        vs = self.cluster.volume_state(volume)
        if vs is None:
            raise NotFoundError(f"unknown volume {volume}", volume=volume)
        vol_cfg = next((v for v in self.cfg().volumes if v.name == volume), None)
        if vol_cfg is None:
            raise NotFoundError(f"volume {volume} is not configured at {self.site_id}", volume=volume)
        started = time.time()
        rep = await self.recovery.drill(volume, seq, sandbox, keep=True, op=op)
        image = Path(rep["target"])
        try:
            if op is not None:
                op.phase = "checking"
            fsck = await self._fsck(image, vol_cfg.drill.fsck_timeout_s)
            app = await self._app_check(image, volume, rep["seq"], vol_cfg.drill.check,
                                        vol_cfg.drill.check_timeout_s)
        finally:
            if not keep:
                image.unlink(missing_ok=True)
        finished = time.time()
        snap = (self.cluster.volume_state(volume) or vs)["snapshots"].get(rep["seq"]) or {}
        created_ns = snap.get("created_at_ns")
        rpo_s = round(started - created_ns / 1e9, 3) if created_ns else None
        target_s = 3 * float(vol_cfg.interval_s)
        phases = rep.get("phases") or {}
        # a drill proves recovery only from a snapshot every check says is clean: restoring
        # ransomware output (a suspect snapshot) verifies its root but is no recovery point, and
        # must not reset the drill-overdue alert (found by a new operator)
        suspect = rep.get("verdict") == "suspect"
        passed = bool(rep.get("verified")) and (fsck["ok"] or not fsck["checked"]) and \
            (app["ok"] or not app["configured"]) and not suspect
        report = {
            "v": drillreport.REPORT_VERSION, "kind": drillreport.REPORT_KIND,
            "cluster_id": self.cfg().cluster_id, "site_id": self.site_id,
            "public_key": self.signer.public_key if self.signer else None, "volume": volume,
            "snapshot": {"seq": rep["seq"], "root": rep["root"], "epoch": snap.get("epoch"),
                         "verdict": rep.get("verdict"),
                         "created_at": _utc(created_ns / 1e9) if created_ns else None},
            "rpo": {"measured_s": rpo_s, "target_s": target_s,
                    "within_target": rpo_s is not None and rpo_s <= target_s},
            "rto": {"measured_s": round(float(rep.get("rto_s", rep["seconds"])), 3),
                    "restore_s": round(float(phases.get("fetch_s", 0.0) + phases.get("write_s", 0.0)), 3),
                    "verify_s": round(float(phases.get("verify_s", 0.0)), 3)},
            "restore": {"verified": bool(rep.get("verified")), "blocks_written": rep.get("blocks_written"),
                        "bytes_written": rep.get("bytes_written"), "image": str(image), "kept": keep},
            "fsck": fsck, "application_check": app,
            "ran_by": {"token": who[0], "role": who[1]},
            "started_at": _utc(started), "finished_at": _utc(finished),
            "outcome": "passed" if passed else "failed",
        }
        signature = drillreport.sign_report(self.signer.private_key, report) if self.signer else None
        html_text = drillreport.render_html(report, signature)
        try:
            path = await asyncio.to_thread(self._keep, volume, report, html_text, finished if passed else None)
        except OSError as err:
            raise from_os_error(err, f"keep the drill report under {self.dir}") from None
        self.metrics.drill_finished(volume, passed, finished)
        (log.info if passed else log.error)(
            "drill %s#%d at %s by %s: %s%s (RPO %.1fs, RTO %.2fs, fsck %s, application check %s); report %s",
            volume, rep["seq"], self.site_id, who[0], report["outcome"].upper(),
            " (the snapshot is judged suspect: not a recovery point)" if suspect else "", rpo_s or -1.0,
            report["rto"]["measured_s"], "ok" if fsck["ok"] else "not checked" if not fsck["checked"] else "FAILED",
            "ok" if app["ok"] else "not configured" if not app["configured"] else "FAILED", path)
        rep.update(kept=keep, outcome=report["outcome"], report=report, signature=signature, html=html_text,
                   report_path=str(path))
        return rep

    async def _fsck(self, image: Path, timeout_s: float) -> dict:
        """The file-system check of ``image`` (see the module docstring)."""
        base = {"checked": False, "ok": False, "tool": None, "returncode": None, "output_tail": "", "reason": None}
        try:
            is_ext = await asyncio.to_thread(holds_ext, image)
        except OSError as err:
            return {**base, "reason": f"could not read the image: {err.strerror or err}"}
        if not is_ext:
            return {**base, "reason": "the image holds no ext2/3/4 file system (no superblock magic at byte 1080); "
                                      "no other file system is checked"}
        tool = shutil.which("e2fsck") or next((p for p in ("/usr/sbin/e2fsck", "/sbin/e2fsck") if os.access(p, os.X_OK)),
                                             None)
        if tool is None:
            return {**base, "reason": "ext file system found, but e2fsck is not installed (Debian e2fsprogs)"}
        res = await run_check([tool, "-fn", str(image)], timeout_s)
        return {"checked": res["returncode"] is not None and not res["timed_out"], "ok": res["ok"],
                "tool": "e2fsck -fn", "returncode": res["returncode"], "output_tail": res["output_tail"],
                "reason": res["reason"]}

    async def _app_check(self, image: Path, volume: str, seq: int, argv: tuple[str, ...], timeout_s: float) -> dict:
        """The volume's application check against ``image`` (``[volumes.drill] check``)."""
        if not argv:
            return {"configured": False, "ok": False, "command": [], "returncode": None, "seconds": None,
                    "timed_out": False, "output_tail": "", "reason": "no [volumes.drill] check configured"}
        command = [a.replace("{image}", str(image)) for a in argv]
        res = await run_check(command, timeout_s, env={"REPLICAD_DRILL_IMAGE": str(image),
                                                       "REPLICAD_DRILL_VOLUME": volume,
                                                       "REPLICAD_DRILL_SEQ": str(seq)})
        return {"configured": True, "command": command, **res}


__all__ = ["Drills", "holds_ext", "run_check"]
