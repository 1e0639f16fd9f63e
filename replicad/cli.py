"""The ``replicad`` command line.

``run`` and ``check-config`` work on a config file; ``demo`` runs the three-site demo; the
other commands talk to a site's admin API (``--admin URL``, or the ``admin.listen`` of
``--config PATH``, or ``$REPLICAD_ADMIN``, default ``http://127.0.0.1:7301``).

Human output is a rich table; ``--json`` prints the API's JSON for scripts. Errors print
one line (never a traceback) and exit with the code of their class in
:mod:`replicad.errors` (2 usage/config, 3 not found, 4 conflict, 5 integrity, 6 protocol,
7 unavailable, 70 internal).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .adminclient import call_admin
from .errors import ConfigError, InternalError, ReplicadError, from_dict

def _console(stderr: bool) -> Console:
    """A rich console; when output is not a terminal, wide enough that tables are not cut."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 160, highlight=False)


console = _console(stderr=False)
err_console = _console(stderr=True)


def _admin_url(args: argparse.Namespace) -> str:
    if getattr(args, "admin", None):
        return args.admin.rstrip("/")
    if getattr(args, "site_config", None):
        from .config import load_config

        cfg = load_config(Path(args.site_config))
        return cfg.self_ref().admin_url
    return os.environ.get("REPLICAD_ADMIN", "http://127.0.0.1:7301").rstrip("/")


def api(args: argparse.Namespace, method: str, path: str, body: dict | None = None, timeout_s: float = 600) -> Any:
    """Call the admin API of the chosen site; returns the decoded JSON or raises the error class it names."""
    return call_admin(_admin_url(args), method, path, body, timeout_s)


def _print(args: argparse.Namespace, data: Any, render=None) -> None:
    if getattr(args, "json", False) or render is None:
        console.print_json(json.dumps(data))
    else:
        render(data)


def _site_name(data: dict, raft_addr: str | None) -> str:
    """The site id of a Raft address, as listed in the status' ``raft_sites`` map."""
    if raft_addr is None:
        return "none (election in progress or no quorum)"
    return data.get("raft_sites", {}).get(raft_addr, raft_addr)


def _render_status(data: dict) -> None:
    raft = data.get("raft", {})
    console.print(f"[bold]site[/bold] {data['site_id']}   raft leader: {_site_name(data, raft.get('leader'))}   "
                  f"term {raft.get('term')}   commit index {raft.get('commit_index')}   "
                  f"quorum: {'yes' if raft.get('has_quorum') else 'NO'}")
    t = Table(title="volumes")
    for col in ("volume", "role", "primary", "epoch", "newest", "newest clean", "standby", "RPO s", "suspect",
                "divergent", "last error"):
        t.add_column(col)
    for name, v in data.get("volumes", {}).items():
        rpo = v.get("rpo_s")
        standby = "-" if v.get("role") == "primary" or v.get("standby_seq") is None else str(v["standby_seq"])
        t.add_row(name, v.get("role", ""), str(v.get("primary")), str(v.get("epoch")), str(v.get("newest_committed")),
                  str(v.get("newest_clean")), standby, f"{rpo:.1f}" if rpo is not None else "-",
                  ",".join(map(str, v.get("suspect", []))) or "-",
                  ",".join(f"{d['epoch']}:{d['seq']}" for d in v.get("divergent", [])) or "-",
                  v.get("last_error") or "", style="red" if v.get("suspect") else None)
    console.print(t)


def _render_volumes(data: dict) -> None:
    t = Table(title="volumes (cluster view)")
    for col in ("volume", "primary", "epoch", "block size", "size", "min copies", "snapshots", "last seq"):
        t.add_column(col)
    from .units import format_size

    for name, v in sorted(data.get("volumes", {}).items()):
        t.add_row(name, str(v.get("primary")), str(v.get("epoch")), format_size(v.get("block_size", 0)),
                  format_size(v.get("size_bytes", 0)), str(v.get("min_copies")), str(v.get("snapshots")),
                  str(v.get("last_seq")))
    console.print(t)


def _render_cycle(r: dict) -> None:
    state = "committed" if r.get("committed") else "NOT committed (too few sites stored it)"
    style = "red" if r.get("verdict") == "suspect" else "green"
    console.print(f"snapshot #{r['seq']}: {state}, [{style}]{r.get('verdict')}[/{style}] "
                  f"(score {r.get('score', 0):.4f}, baseline {r.get('baseline', 0):.4f}), "
                  f"{r.get('changed_blocks')} changed blocks, held by {', '.join(r.get('holders', []))}, "
                  f"{r.get('bytes_shipped', 0)} bytes shipped in {r.get('cycle_s', r.get('scan_s', 0)):.2f}s")
    for peer, p in sorted(r.get("peers", {}).items()):
        if not p.get("ok"):
            console.print(f"  {peer}: not stored yet — {p.get('error')}: {p.get('message')}")


def _render_promote(r: dict) -> None:
    line = f"{r['volume']}: primary is now {r['primary']} at epoch {r.get('epoch')}"
    if r.get("restored_seq") is not None:
        line += f"; restored snapshot #{r['restored_seq']}, root verified, in {r.get('rto_s', 0):.2f}s"
    if r.get("final_seq") is not None:
        line += f"; final snapshot #{r['final_seq']} committed before the handover"
    console.print(line)


def _render_snapshots(data: dict) -> None:
    t = Table(title=f"{data['volume']} — primary {data['primary']}, epoch {data['epoch']}")
    for col in ("seq", "epoch", "verdict", "created", "holders", "changed blocks", "root"):
        t.add_column(col)
    import datetime as dt

    for s in data["snapshots"]:
        created = dt.datetime.fromtimestamp(s["created_at_ns"] / 1e9).strftime("%Y-%m-%d %H:%M:%S")
        style = "red" if s["verdict"] == "suspect" else None
        t.add_row(str(s["seq"]), str(s["epoch"]), s["verdict"], created, ",".join(s["holders"]),
                  str(s.get("stats", {}).get("changed_blocks", "")), str(s["root"])[:16], style=style)
    for d in data.get("divergent", []):
        t.add_row(str(d["seq"]), str(d["epoch"]), "divergent", "", "(this site only)", "", str(d["root"])[:16],
                  style="yellow")
    console.print(t)


def cmd_run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .daemon import run_site

    cfg = load_config(Path(args.config))
    setup_logging(cfg.log_level)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(run_site(cfg))


def cmd_check_config(args: argparse.Namespace) -> int:
    from .config import load_config

    cfg = load_config(Path(args.config))
    console.print(f"{args.config}: ok — site {cfg.site_id}, {len(cfg.sites)} sites, {len(cfg.volumes)} volume(s)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(args.dir) if args.dir else None, size_mib=args.size_mib, seed=args.seed)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``replicad`` console script. Returns (and exits with) the exit code."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--admin", default=argparse.SUPPRESS, help="admin API URL of the site to talk to")
    common.add_argument("--config", dest="site_config", default=argparse.SUPPRESS,
                        help="site config file (its admin_url is used)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts")
    parser = argparse.ArgumentParser(prog="replicad", parents=[common],
                                     description="replicad: block-level snapshot replication between sites, "
                                                 "agreed through Raft, for recovery after ransomware.")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common])

    p = command("run", help="run a site daemon")
    p.add_argument("config")
    p.set_defaults(fn=cmd_run)
    p = command("check-config", help="validate a site config file (all problems at once)")
    p.add_argument("config")
    p.set_defaults(fn=cmd_check_config)
    p = command("demo", help="three sites on this machine: replicate, attack, fail over, restore")
    p.add_argument("--dir", help="keep the demo's state in this directory")
    p.add_argument("--size-mib", type=int, default=256, help="volume size (MiB)")
    p.add_argument("--seed", type=int, default=20261129)
    p.set_defaults(fn=cmd_demo)

    p = command("status", help="site, Raft and per-volume status")
    p.set_defaults(fn=lambda a: _print(a, api(a, "GET", "/v1/status"), _render_status))
    p = command("volumes", help="the cluster's volumes")
    p.set_defaults(fn=lambda a: _print(a, api(a, "GET", "/v1/volumes"), _render_volumes))
    p = command("snapshots", help="snapshots of a volume")
    p.add_argument("volume")
    p.set_defaults(fn=lambda a: _print(a, api(a, "GET", f"/v1/volumes/{a.volume}/snapshots"), _render_snapshots))
    p = command("snapshot", help="take a snapshot now (at the primary)")
    p.add_argument("volume")
    p.set_defaults(fn=lambda a: _print(a, api(a, "POST", f"/v1/volumes/{a.volume}/snapshot", {}), _render_cycle))
    p = command("promote", help="planned switchover (--to SITE) or forced failover (--force, here)")
    p.add_argument("volume")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--to")
    g.add_argument("--force", action="store_true")
    p.set_defaults(fn=lambda a: _print(a, api(a, "POST", f"/v1/volumes/{a.volume}/promote",
                                               {"to": a.to, "force": a.force}), _render_promote))
    p = command("demote", help="leave a volume without primary (fences the current one)")
    p.add_argument("volume")
    p.set_defaults(fn=lambda a: _print(a, api(a, "POST", f"/v1/volumes/{a.volume}/demote", {}), lambda r: console.print(
        f"{r['volume']}: no primary now, epoch {r['epoch']} (the old primary fences itself)")))
    p = command("restore", help="restore a committed snapshot into a path; succeeds only once its root is verified")
    p.add_argument("volume")
    p.add_argument("--target", required=True)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--snapshot", type=int, dest="seq")
    g.add_argument("--last-clean", action="store_true", help="the newest clean snapshot (the default)")
    p.add_argument("--overwrite", action="store_true", help="rewrite an existing target (only differing blocks)")
    p.set_defaults(fn=cmd_restore)

    args = parser.parse_args(argv)
    try:
        rc = args.fn(args)
        return int(rc or 0)
    except ConfigError as err:
        where = getattr(args, "config", None) or "the configuration"
        err_console.print(f"[red]config invalid[/red]: {len(err.problems) or 1} problem(s) in {where}:")
        for problem in err.problems or [err.message]:
            err_console.print(f"  - {problem}", markup=False, soft_wrap=True)
        return err.exit_code
    except ReplicadError as err:
        err_console.print(f"[red]{err.code}[/red]: ", end="")
        err_console.print(err.message, markup=False, soft_wrap=True)
        if err.code == "peer_unavailable" and "admin API" in err.message:
            err_console.print("  hint: is the site's daemon running? choose the site with --admin URL or "
                              "--config FILE (or $REPLICAD_ADMIN)", markup=False, soft_wrap=True)
        if err.evidence:
            err_console.print(f"  evidence: {json.dumps(err.to_dict()['evidence'])}", markup=False, soft_wrap=True)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # noqa: BLE001 — never a traceback to an operator
        e = InternalError(f"internal error: {err!r}")
        err_console.print(f"[red]{e.code}[/red]: {e.message}", markup=False)
        return e.exit_code


def cmd_restore(args: argparse.Namespace) -> int:
    """Start the restore as an operation, show a progress bar while polling it, print the result."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    body = {"target": str(Path(args.target).absolute()), "seq": args.seq, "last_clean": args.last_clean,
            "overwrite": args.overwrite, "wait": False}
    op = api(args, "POST", f"/v1/volumes/{args.volume}/restore", body)
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("blocks"), TimeElapsedColumn(), console=err_console, disable=getattr(args, "json", False)) as progress:
        task = progress.add_task(f"restore {args.volume}: starting", total=None)
        while op["state"] == "running":
            time.sleep(0.2)
            op = api(args, "GET", f"/v1/operations/{op['id']}")
            progress.update(task, description=f"restore {args.volume}: {op['phase']}",
                            completed=op["done_blocks"], total=op["total_blocks"] or None)
    if op["state"] == "failed":
        raise from_dict(op["error"] or {"error": "internal", "message": "restore failed"})
    result = op["result"]
    if result.get("verdict") == "suspect":
        err_console.print(f"[red]warning[/red]: snapshot #{result['seq']} is SUSPECT (ransomware signal): its "
                          "content may be encrypted; the newest clean snapshot is the default")
    _print(args, result, lambda r: console.print(
        f"restored {r['volume']}#{r['seq']} ({r.get('verdict')}) into {r['target']}: root verified "
        f"{r['root'][:16]}…, {r['blocks_written']} blocks written in {r['seconds']:.2f}s"))
    return 0


def setup_logging(level: str = "info") -> None:
    """Plain one-line logs on stderr (journald adds time and unit): ``LEVEL logger: message``."""
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    sys.exit(main())
