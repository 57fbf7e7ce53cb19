"""The suite's own rules, so that a green CI run means the tests ran: a test that needs the data sample
fails in CI when the sample is missing (one fixture, ``sample_dir``), the project's own modules are never
``importorskip``-ed (that would hide a module that fails to import), and every marker is declared
(``--strict-markers``)."""
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

TESTS = ROOT / "tests"
BUILTIN_MARKERS = {"parametrize", "skip", "skipif", "xfail", "usefixtures", "filterwarnings"}


def run_sample_test(missing, ci: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["NIN_MULTI_SAMPLE_DIR"] = str(missing)
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_data.py::test_sample_data_loads"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_a_missing_sample_skips_locally_and_fails_in_ci(tmp_path):
    missing = tmp_path / "no-sample"
    local = run_sample_test(missing, ci=False)
    assert local.returncode == 0, local.stdout[-2000:]
    assert "1 skipped" in local.stdout and f"the Fashion-MNIST sample is not at {missing}" in local.stdout
    ci = run_sample_test(missing, ci=True)
    assert ci.returncode == 1, ci.stdout[-2000:]
    assert "1 error" in ci.stdout and "CI must run this test: the Fashion-MNIST sample is not at" in ci.stdout


def test_the_sample_is_reached_only_through_its_fixture():
    """A test that checks the sample's path itself would skip in CI too: only conftest names it."""
    named = re.compile(r"\bSAMPLE_DIR\b|fashion-mnist-sample")
    for path in sorted(TESTS.glob("test_*.py")):
        if path.name != "test_suite.py":
            assert not named.search(path.read_text()), f"{path.name}: take the sample_dir fixture"


def test_the_project_s_own_modules_are_never_importorskipped():
    own = re.compile(r"importorskip\(\s*[\"'](nin_multi|backends)\b")
    for path in sorted(TESTS.glob("*.py")):
        assert not own.search(path.read_text()), f"{path.name}: load the backend with conftest's load()"


def test_markers_are_strict_and_every_marker_used_is_declared():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pytest_ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "--strict-markers" in pytest_ini["addopts"].split()
    declared = {m.split(":")[0].strip() for m in pytest_ini["markers"]}
    used = {m for path in TESTS.glob("*.py") for m in re.findall(r"pytest\.mark\.(\w+)", path.read_text())}
    assert used - BUILTIN_MARKERS <= declared, used - BUILTIN_MARKERS - declared
