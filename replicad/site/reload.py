"""Configuration reload (SIGHUP): which changes apply live, the config a running site switches
to, and the reload itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from replicad.config import SiteConfig, load_config
from replicad.core.errors import ConfigError, ReplicadError
from replicad.telemetry.systemd import configure_logging

log = logging.getLogger("replicad.site.reload")

# Fields a SIGHUP may change; anything else needs a restart (identity, addresses, storage,
# membership, volume geometry, Raft-agreed settings).
RELOADABLE_SITE_FIELDS = frozenset({"log_level", "volumes", "admin_tokens", "scrub"})  # tokens: revocation
RELOADABLE_VOLUME_FIELDS = frozenset({"interval_s", "apply_delay_s", "anomaly", "source", "standby", "drill"})


def reload_plan(old: SiteConfig, new: SiteConfig) -> tuple[list[str], list[str]]:
    """Compare two configs of one site: ``(changed_reloadable, changed_needing_restart)``,
    as key paths (``"volumes[ehr].interval_s"``). Pure."""
    safe: list[str] = []
    unsafe: list[str] = []
    a, b = old.model_dump(), new.model_dump()
    for key in sorted(set(a) | set(b)):
        if key == "volumes" or a.get(key) == b.get(key):
            continue
        (safe if key in RELOADABLE_SITE_FIELDS else unsafe).append(key)
    old_vols = {v["name"]: v for v in a.get("volumes", ())}
    new_vols = {v["name"]: v for v in b.get("volumes", ())}
    for name in sorted(set(old_vols) ^ set(new_vols)):
        unsafe.append(f"volumes[{name}] added or removed")
    for name in sorted(set(old_vols) & set(new_vols)):
        for key in sorted(set(old_vols[name]) | set(new_vols[name])):
            if old_vols[name].get(key) != new_vols[name].get(key):
                (safe if key in RELOADABLE_VOLUME_FIELDS else unsafe).append(f"volumes[{name}].{key}")
    return safe, unsafe


def live_config(old: SiteConfig, new: SiteConfig) -> SiteConfig:
    """The config a running site switches to on reload: ``old`` with every reloadable field
    (:data:`RELOADABLE_SITE_FIELDS`, and :data:`RELOADABLE_VOLUME_FIELDS` of the volumes both
    configs have) taken from ``new``; everything that needs a restart keeps its old value, and
    volumes added or removed stay as they were (they need a restart). Pure.

    Raises:
        ConfigError: that mix breaks a cross-field rule (e.g. every admin token removed while
            the non-loopback ``admin.listen`` it required can only change at a restart).
    """
    from pydantic import ValidationError

    new_vols = {v.name: v for v in new.volumes}
    volumes = tuple(v.model_copy(update={f: getattr(new_vols[v.name], f) for f in RELOADABLE_VOLUME_FIELDS})
                    if v.name in new_vols else v for v in old.volumes)
    fields = {f: getattr(old, f) for f in type(old).model_fields}
    fields.update({f: getattr(new, f) for f in RELOADABLE_SITE_FIELDS if f != "volumes"}, volumes=volumes)
    try:
        return type(old).model_validate(fields)  # the cross-field rules, on the mix
    except ValidationError as err:
        problems = [p for e in err.errors(include_url=False)
                    for p in (e.get("ctx", {}).get("problems") or [e["msg"]])]
        raise ConfigError("the changes that apply live are invalid without those that need a restart",
                          problems=problems) from None


async def reload_from(cfg: SiteConfig, config_path: Path, notifier, switch: Callable[[SiteConfig], None]) -> dict:
    """SIGHUP: re-read the config file and apply every change that can be applied live
    (:func:`reload_plan`): ``switch(live)`` is called with the config the site runs on from
    now (:func:`live_config`); a change that needs a restart keeps its old value until then
    and is logged (WARNING) and shown in systemd's STATUS. A config that fails validation
    is refused as a whole (logged with every problem); the site keeps ``cfg``.
    Returns ``{"applied": [key path], "refused": [key path]}``.
    """
    notifier.reloading()
    try:
        new = load_config(config_path)
    except ReplicadError as err:
        log.error("reload refused, config invalid: %s", "; ".join(getattr(err, "problems", []) or [str(err)]))
        notifier.ready("serving (reload refused: config invalid)")
        return {"applied": [], "refused": ["invalid config"]}
    safe, unsafe = reload_plan(cfg, new)
    try:
        live = live_config(cfg, new)
    except ConfigError as err:
        log.error("reload refused: the live changes %s are invalid without the changes that need a restart "
                  "(%s): %s", ", ".join(safe), ", ".join(unsafe), "; ".join(err.problems))
        notifier.ready("serving (reload refused: restart needed)")
        return {"applied": [], "refused": safe + unsafe}
    switch(live)
    configure_logging(live.log_level)
    log.info("reloaded %s: %s", config_path, ", ".join(safe) or "no change applied")
    if unsafe:
        log.warning("reload: these changes need a restart and keep their old value until then: %s",
                    ", ".join(unsafe))
        notifier.ready(f"serving (configuration reloaded; restart needed for: {', '.join(unsafe)})")
    else:
        notifier.ready("serving (configuration reloaded)")
    return {"applied": safe, "refused": unsafe}
