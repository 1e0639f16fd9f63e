"""``replicad raise-rules`` (a site's operator's consent to raise the cluster's rules leaving
members behind, ``POST /v1/rules/raise``) and its line in ``replicad status``, against a stub admin
API on 127.0.0.1 (the CLI runs as a real process)."""

from __future__ import annotations

from tests.unit.ops.test_cli import STATUS, admin_stub, run_env  # noqa: F401  (admin_stub: a fixture)

RULES = {"version": 1, "max": 2, "reported_max": 2, "waiting": True, "waiting_since": 1.0,
         "members": {"site-a": {"rules_max": 2, "problem": None}, "site-b": {"rules_max": 2, "problem": None},
                     "site-c": {"rules_max": 1, "problem": "runs rules 1..1"}}, "consented": [], "consent": None}
CONSENT = {"leave_behind": ["site-c"], "reason": "old disks", "by": "ops", "at_ns": 1_796_000_000 * 10**9,
           "expires_ns": 1_796_086_400 * 10**9}


def test_raise_rules_sends_the_consent_and_says_what_follows(admin_stub) -> None:
    url, answers = admin_stub
    answers["/v1/rules/raise"] = (200, {"consent": CONSENT, "withdrawn": None, "rules": RULES})
    done = run_env({"COLUMNS": "200"}, "--admin", url, "raise-rules", "--leave-behind", "site-c,site-d",
                   "--leave-behind", "site-c", "--reason", "old disks")
    assert done.returncode == 0, done.stderr
    assert answers["__received__"][-1] == ("POST", "/v1/rules/raise",
                                           {"leave_behind": ["site-c", "site-d"], "reason": "old disks"})
    text = " ".join(done.stdout.split())
    assert "leaving behind site-c until 2026-" in text and "a majority of the operators" in text, text
    assert "0 of 3 operators' consents (need 2); this site's operator leaves behind: site-c" in text, text
    answers["/v1/rules/raise"] = (200, {"consent": None, "withdrawn": CONSENT, "rules": RULES})
    done = run_env({}, "--admin", url, "raise-rules", "--cancel")
    assert done.returncode == 0 and answers["__received__"][-1][2] == {"cancel": True}, done.stderr
    assert "consent withdrawn" in done.stdout


def test_raise_rules_refuses_a_consent_without_a_reason_or_both_forms(admin_stub) -> None:
    url, answers = admin_stub
    sent = len(answers["__received__"])
    for args in (("--leave-behind", "site-c"), ("--leave-behind", "site-c", "--cancel", "--reason", "x"), ()):
        done = run_env({}, "--admin", url, "raise-rules", *args)
        assert done.returncode == 2 and "Traceback" not in done.stderr, (args, done.stderr)
    assert len(answers["__received__"]) == sent  # nothing sent


def test_status_shows_the_consents_while_the_raise_waits(admin_stub) -> None:
    url, answers = admin_stub
    answers["/v1/status"] = (200, {**STATUS, "rules": {**RULES, "consented": ["site-a"], "consent": CONSENT}})
    text = " ".join(run_env({"COLUMNS": "200"}, "--admin", url, "status").stdout.split())
    assert ("consents to leave members behind: 1 of 3 operators' consents (need 2): site-a; this site's operator "
            "leaves behind: site-c") in text, text  # how many more are needed, not only whose
    answers["/v1/status"] = (200, {**STATUS, "rules": RULES})
    text = " ".join(run_env({"COLUMNS": "200"}, "--admin", url, "status").stdout.split())
    assert "consents to leave members behind" not in text, text
