"""Progress bars: redrawn on a terminal, plain log lines in files and job logs."""

from __future__ import annotations

import io
import logging
import sys

from pipeline.progress import progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_one_redrawn_bar(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress_bar(3, "studies") as bar:
        for _ in range(3):
            bar.update()
    text = terminal.getvalue()
    assert "\r" in text and text.endswith("\n")
    assert "3/3" in text and "studies" in text


def test_a_log_gets_plain_lines_without_control_characters(monkeypatch, caplog):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    with (
        caplog.at_level(logging.INFO, logger="twoview.progress"),
        progress_bar(10, "studies", interval=0) as bar,
    ):
        bar.update(4)
    assert stream.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records]
    assert any("4/10" in line for line in lines)
    assert not any("\r" in line or "\x1b" in line for line in lines)


def test_the_total_can_arrive_later(monkeypatch, caplog):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with (
        caplog.at_level(logging.INFO, logger="twoview.progress"),
        progress_bar(None, "files", interval=0) as bar,
    ):
        bar.total = 5
        bar.update(5)
    assert "5/5" in caplog.records[-1].getMessage()
