"""One log record is one line: a peer's name, reason or error holding a newline or another
control character cannot write forged lines into a site's log (review R9, F6)."""

from __future__ import annotations

import io
import logging

from replicad.telemetry.systemd import JournalFormatter, LineFormatter, escaped

FORGED = "routine\n2026-12-07 12:00:01,000 WARNING replicad.site.daemon: AUDIT veto of request r1 by site-c"


def _logged(formatter: logging.Formatter, *args: object, exc: bool = False) -> str:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"test_log_lines.{id(formatter)}")
    logger.propagate, logger.handlers = False, [handler]
    if exc:
        try:
            raise ValueError("own traceback")
        except ValueError:
            logger.exception("AUDIT request %s", *args)
    else:
        logger.warning("AUDIT request %s by %s", *args)
    return out.getvalue()


def test_a_message_with_control_characters_stays_one_line() -> None:
    text = _logged(LineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"), FORGED, "site-a\x1b[2K\r")
    assert text.count("\n") == 1 and "routine\\n2026-12-07" in text and "site-a\\x1b[2K\\r" in text


def test_a_journal_record_cannot_start_another_of_its_choosing() -> None:
    text = _logged(JournalFormatter(), "x\n<3>replicad: forged ERROR", "site-a")
    assert text.splitlines() == ["<4>test_log_lines." + text.split("test_log_lines.")[1].split(":")[0]
                                 + ": AUDIT request x\\n<3>replicad: forged ERROR by site-a"]


def test_an_own_traceback_keeps_its_lines_and_printable_text_is_unchanged() -> None:
    text = _logged(LineFormatter("%(levelname)s %(message)s"), "r1\nforged", exc=True)
    assert text.startswith("ERROR AUDIT request r1\\nforged\nTraceback (most recent call last):\n")
    assert escaped("Zürich ehr: übertrag") == "Zürich ehr: übertrag"
    assert escaped("a\u2028b\u200bc\td") == "a\\u2028b\\u200bc\\td"
