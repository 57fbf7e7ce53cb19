"""The layering holds: ``nin_multi`` imports no framework and names none in a branch, the backends never
import the driver (import-linter's contracts in pyproject.toml, run as ``lint-imports``)."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from nin_multi import backends

FRAMEWORKS = ("torch", "tensorflow", "keras", "mxnet", "jax", "jaxlib", "flax", "optax", "onnx", "onnxruntime")
NAMES = "|".join(sorted({*backends.ORDER, *backends.ALIASES}))
FRAMEWORK_IMPORT = re.compile(rf"^\s*(import|from)\s+({'|'.join(FRAMEWORKS)})(\.|\s|$)", re.M)
#: a comparison with a backend's name or alias: ``backend == "mxnet"``, ``name in ("torch", ...)``, ``"tf" !=``
NAME_BRANCH = re.compile(rf"""(==|!=|\bin)\s*[\(\[\{{]?\s*["']({NAMES})["']|["']({NAMES})["']\s*(==|!=)""")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.is_file():
        pytest.skip("import-linter is not installed: pip install 'nin-multi[test]'")
    return subprocess.run([str(exe), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_import_contracts_hold():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "BROKEN" not in done.stdout and done.stdout.count("KEPT") >= 5


def test_the_contracts_catch_a_planted_violation(tmp_path):
    """The same contracts on a copy with one framework import in ``nin_multi``, one in the backends' shared
    module, one in a launch module and two driver imports in backends: each is reported broken (so the
    test above can fail)."""
    for folder in ("nin_multi", "backends"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / "nin_multi" / "host.py", "a") as f:
        f.write("\n\ndef _planted():\n    import torch\n    return torch\n")
    with open(tmp_path / "backends" / "onnx.py", "a") as f:
        f.write("\n\ndef _planted():\n    from nin_multi.train import train\n    return train\n")
    with open(tmp_path / "backends" / "common.py", "a") as f:
        f.write("\n\ndef _planted():\n    import jax\n    return jax\n")
    with open(tmp_path / "backends" / "torch.py", "a") as f:
        f.write("\n\ndef _planted():\n    from nin_multi.data import batches\n    return batches\n")
    with open(tmp_path / "backends" / "mxnet_launch.py", "a") as f:
        f.write("\n\ndef _planted():\n    import mxnet\n    return mxnet\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0
    assert "nin_multi.host -> torch" in done.stdout
    assert "backends.onnx -> nin_multi.train" in done.stdout
    assert "backends.common -> jax" in done.stdout
    assert "backends.torch -> nin_multi.data" in done.stdout
    assert "backends.mxnet_launch -> mxnet" in done.stdout


def python_files(folder: Path):
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", python_files(ROOT / "nin_multi"), ids=lambda p: str(p.relative_to(ROOT)))
def test_nin_multi_names_no_framework_in_its_code(path):
    text = path.read_text()
    assert not FRAMEWORK_IMPORT.search(text), f"{path.name} imports a framework: move that code into backends/"
    branches = [line.strip() for line in text.splitlines() if NAME_BRANCH.search(line)]
    assert not branches, f"{path.name} branches on a framework's name: {branches[:3]}"


def test_the_scan_finds_what_it_looks_for():
    assert FRAMEWORK_IMPORT.search("    import torch.distributed as tdist\n")
    assert FRAMEWORK_IMPORT.search("from onnxruntime import InferenceSession\n")
    assert not FRAMEWORK_IMPORT.search("from .torchrun import main\nimport jaxtyping\n")
    for line in ('if backend == "mxnet":', "elif name in ('torch', 'tf'):", 'if "jax" != key:', "if b in {'onnx'}:"):
        assert NAME_BRANCH.search(line), line
    assert not NAME_BRANCH.search('raise ConfigError(f"the {name} backend has no engine")')
