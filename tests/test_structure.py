"""The import graph: no cycles, and imports point down the layers (models -> pipeline -> app)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "import_graph.py"


def test_no_import_cycle_and_no_import_against_the_layers():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "cycles and layering violations: 0" in done.stdout
    assert "models.twoview -> models.config" in done.stdout  # the graph is really read


def test_the_check_catches_a_cycle_and_a_layer_violation(tmp_path, monkeypatch):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import import_graph
    finally:
        sys.path.remove(str(SCRIPT.parent))
    edges = {"pipeline.a": {"pipeline.b"}, "pipeline.b": {"pipeline.a"}, "models.x": set()}
    assert import_graph.cycles(edges) == [["pipeline.a", "pipeline.b", "pipeline.a"]]
    bad = import_graph.layer_violations({"models.x": {"pipeline.a"}}, {"models.x": set()})
    assert bad and "models.x imports pipeline.a" in bad[0]
