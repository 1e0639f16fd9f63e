"""A value where the config file needs a table (``volumes = [1, 2]`` for ``[[volumes]]``) is named in
the file's own words, not pydantic's class names (``instance of VolumeConfig``)."""

from __future__ import annotations

from typing import Any

from tests.unit.config.test_config import _problems, doc  # noqa: F401  (doc: a fixture)


def test_a_value_for_a_table_names_the_table(doc: dict[str, Any]) -> None:  # noqa: F811
    retention = {**doc["volumes"][0], "retention": 5}
    problems = _problems({**doc, "volumes": [1, "ehr", retention], "sites": [[1]]})
    assert "volumes[0]: must be a table ([[volumes]]), not an integer" in problems, problems
    assert "volumes[1]: must be a table ([[volumes]]), not a string" in problems, problems
    assert "volumes[2].retention: must be a table ([volumes.retention]), not an integer" in problems, problems
    assert "sites[0]: must be a table ([[sites]]), not an array" in problems, problems
    assert not [p for p in problems if "Config" in p or "SiteRef" in p or "dictionary" in p], problems
