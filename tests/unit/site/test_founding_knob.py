"""The rules a site's ``found`` proposals carry (``rules_raise.founding_rules``): this release's
``RULES_MAX``; the lab knob ``REPLICAD_LAB_FOUND_RULES`` only on a ``lab = true`` config."""

from __future__ import annotations

import logging

import pytest

from replicad.core.errors import ConfigError
from replicad.core.state import RULES_MAX
from replicad.site.rules_raise import LAB_FOUND_RULES_ENV, founding_rules


def test_a_site_founds_under_this_releases_rules(monkeypatch):
    monkeypatch.delenv(LAB_FOUND_RULES_ENV, raising=False)
    assert founding_rules(lab=False) == founding_rules(lab=True) == RULES_MAX


def test_the_lab_knob_counts_only_on_a_test_bench(monkeypatch, caplog):
    monkeypatch.setenv(LAB_FOUND_RULES_ENV, "1")
    assert founding_rules(lab=True) == 1
    with caplog.at_level(logging.WARNING, logger="replicad.site.rules_raise"):
        assert founding_rules(lab=False) == RULES_MAX
    assert "test bench setting" in caplog.text


@pytest.mark.parametrize("text", ["0", str(RULES_MAX + 1), "two", ""])
def test_a_bad_lab_knob_is_a_config_error(monkeypatch, text):
    monkeypatch.setenv(LAB_FOUND_RULES_ENV, text)
    with pytest.raises(ConfigError):
        founding_rules(lab=True)
