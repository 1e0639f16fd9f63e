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

console = Console(stderr=False)
err_console = Console(stderr=True)


def _admin_url(args: argparse.Namespace) -> str:
    if args.admin:
        return args.admin.rstrip("/")
    if args.config:
        from .config import load_config

        cfg = load_config(Path(args.config))
        return cfg.self_ref().admin_url
    return os.environ.get("REPLICAD_ADMIN", "http://127.0.0.1:7301").rstrip("/")


def api(args: argparse.Namespace, method: str, path: str, body: dict | None = None, timeout_s: float = 600) -> Any:
    """Call the admin API of the chosen site; returns the decoded JSON or raises the error class it names."""
    return call_admin(_admin_url(args), method, path, body, timeout_s)


def _print(args: argparse.Namespace, data: Any, render=None) -> None:
    if args.json or render is None:
        console.print_json(json.dumps(data))
    else:
        render(data)


def _render_status(data: dict) -> None:
    raft = data.get("raft", {})
    console.print(f"[bold]site[/bold] {data['site_id']}  raft leader {raft.get('leader')}  term {raft.get('term')}"
                  f"  commit {raft.get('commit_index')}  quorum {raft.get('has_quorum')}")
    t = Table(title="volumes")
    for col in ("volume", "role", "primary", "epoch", "newest", "clean", "standby", "RPO s", "suspect", "divergent",
                "last error"):
        t.add_column(col)
    for name, v in data.get("volumes", {}).items():
        rpo = v.get("rpo_s")
        t.add_row(name, v.get("role", ""), str(v.get("primary")), str(v.get("epoch")), str(v.get("newest_committed")),
                  str(v.get("newest_clean")), str(v.get("standby_seq")), f"{rpo:.1f}" if rpo is not None else "-",
                  ",".join(map(str, v.get("suspect", []))) or "-",
                  ",".join(f"{d['epoch']}:{d['seq']}" for d in v.get("divergent", [])) or "-",
                  v.get("last_error") or "")
    console.print(t)


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
    parser = argparse.ArgumentParser(prog="replicad", description=__doc__.split("\n\n")[0])
    parser.add_argument("--admin", help="admin API URL of the site to talk to")
    parser.add_argument("--config", help="site config file (its admin.listen is used)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a site daemon")
    p.add_argument("config")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("check-config", help="validate a site config file (all problems at once)")
    p.add_argument("config")
    p.set_defaults(fn=cmd_check_config)
    p = sub.add_parser("demo", help="three sites on this machine: replicate, attack, fail over, restore")
    p.add_argument("--dir", help="keep the demo's state in this directory")
    p.add_argument("--size-mib", type=int, default=256, help="volume size (MiB)")
    p.add_argument("--seed", type=int, default=20261129)
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("status", help="site, Raft and per-volume status")
    p.set_defaults(fn=lambda a: _print(a, api(a, "GET", "/v1/status"), _render_status))
    p = sub.add_parser("volumes", help="the cluster's volumes")
    p.set_defaults(fn=lambda a: _print(a, api(a, "GET", "/v1/volumes")))
    p = sub.add_parser("snapshots", help="snapshots of a volume")
    p.add_argument("volume")
    p.set_defaults(fn=lambda a: _print(a, api(a, "GET", f"/v1/volumes/{a.volume}/snapshots"), _render_snapshots))
    p = sub.add_parser("snapshot", help="take a snapshot now (at the primary)")
    p.add_argument("volume")
    p.set_defaults(fn=lambda a: _print(a, api(a, "POST", f"/v1/volumes/{a.volume}/snapshot", {})))
    p = sub.add_parser("promote", help="planned switchover (--to SITE) or forced failover (--force, here)")
    p.add_argument("volume")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--to")
    g.add_argument("--force", action="store_true")
    p.set_defaults(fn=lambda a: _print(a, api(a, "POST", f"/v1/volumes/{a.volume}/promote",
                                               {"to": a.to, "force": a.force})))
    p = sub.add_parser("demote", help="leave a volume without primary (fences the current one)")
    p.add_argument("volume")
    p.set_defaults(fn=lambda a: _print(a, api(a, "POST", f"/v1/volumes/{a.volume}/demote", {})))
    p = sub.add_parser("restore", help="restore a committed snapshot into a path, verified (O5)")
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
        err_console.print(f"[red]config invalid[/red]: {err.message}")
        for problem in err.problems:
            err_console.print(f"  - {problem}")
        return err.exit_code
    except ReplicadError as err:
        err_console.print(f"[red]{err.code}[/red]: {err.message}")
        if err.evidence:
            err_console.print(f"  evidence: {json.dumps(err.to_dict()['evidence'])}")
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # noqa: BLE001 — never a traceback to an operator
        e = InternalError(f"internal error: {err!r}")
        err_console.print(f"[red]{e.code}[/red]: {e.message}")
        return e.exit_code


def cmd_restore(args: argparse.Namespace) -> int:
    """Start the restore as an operation, show a progress bar while polling it, print the result."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    body = {"target": str(Path(args.target).absolute()), "seq": args.seq, "last_clean": args.last_clean,
            "overwrite": args.overwrite, "wait": False}
    op = api(args, "POST", f"/v1/volumes/{args.volume}/restore", body)
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("blocks"), TimeElapsedColumn(), console=err_console, disable=args.json) as progress:
        task = progress.add_task(f"restore {args.volume}: starting", total=None)
        while op["state"] == "running":
            time.sleep(0.2)
            op = api(args, "GET", f"/v1/operations/{op['id']}")
            progress.update(task, description=f"restore {args.volume}: {op['phase']}",
                            completed=op["done_blocks"], total=op["total_blocks"] or None)
    if op["state"] == "failed":
        raise from_dict(op["error"] or {"error": "internal", "message": "restore failed"})
    _print(args, op["result"], lambda r: console.print(
        f"restored {r['volume']}#{r['seq']} into {r['target']}: root verified {r['root'][:16]}…, "
        f"{r['blocks_written']} blocks written in {r['seconds']:.2f}s"))
    return 0


def setup_logging(level: str = "info") -> None:
    """Plain one-line logs on stderr (journald adds time and unit): ``LEVEL logger: message``."""
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    sys.exit(main())
