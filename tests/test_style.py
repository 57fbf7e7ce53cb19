"""flake8 over the project (its settings are in setup.cfg): an undefined name or an unused import is
a bug the other tests may only find on the code path that reaches it."""
import subprocess
import sys

import pytest

from conftest import ROOT


def test_flake8_is_clean():
    pytest.importorskip("flake8", reason="flake8 is in the test extra: pip install -e '.[test]'")
    result = subprocess.run([sys.executable, "-m", "flake8", "nin_multi", "backends", "tests", "notebooks", "docs"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
