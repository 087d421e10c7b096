"""README: relative links resolve, and the code blocks marked to run do run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_relative_links_resolve():
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README) + re.findall(r'src="([^"]+)"', README)
    relative = [t for t in targets if "://" not in t and not t.startswith("mailto:")]
    assert relative, "no relative links found: the pattern is wrong"
    missing = [t for t in relative if not (ROOT / t).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_marked_code_blocks_run(tmp_path):
    blocks = re.findall(r"<!-- runs in CI[^>]*-->\s*```python\n(.*?)```", README, re.S)
    assert blocks, "no block is marked to run"
    for block in blocks:
        out = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "lr" in out.stdout  # the block prints the best val_loss per learning rate
