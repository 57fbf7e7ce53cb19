"""The installed footprint: the renderings ship inside the package as ``nin_multi.backends``; nothing
named ``backends`` (a name any project could claim) lands in site-packages."""
import subprocess
import sys
import zipfile

import pytest

import nin_multi

from conftest import ROOT


def test_wheel_installs_the_backends_inside_the_package(tmp_path):
    pytest.importorskip("setuptools")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("nin_multi-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"nin_multi"}
    for module in ("__init__", "contract", "torch", "torch_dist", "tf", "tf_dist", "mxnet", "mxnet_dist", "jax",
                   "onnx", "torch_bench", "tf_bench", "mxnet_bench", "jax_bench"):
        assert f"nin_multi/backends/{module}.py" in names
    for module in ("__init__", "__main__", "runner", "protocol", "worker", "epochs", "pipeline", "load",
                   "figures", "targets", "report", "accuracy"):
        assert f"nin_multi/bench/{module}.py" in names  # ``python -m nin_multi.bench`` starts the workers
    for module in ("__init__", "runner", "comparison", "statistics", "plots", "report"):
        assert f"nin_multi/reproduce/{module}.py" in names  # a subpackage ships only when pyproject lists it
    assert {"nin_multi/optim.py", "nin_multi/sweep.py"} <= set(names)
    from nin_multi.cli import COMMANDS

    for module in ("__init__", "common", *COMMANDS):
        assert f"nin_multi/cli/{module}.py" in names
    top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["nin_multi"]
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert f"\nVersion: {nin_multi.__version__}\n" in metadata  # one version: the package's, which --version prints


def test_outside_the_checkout_only_nin_multi_backends_imports(tmp_path):
    """From another directory (the checkout is not on sys.path) the registry is ``nin_multi.backends``."""
    code = ("import importlib.util, nin_multi.backends as b; "
            "print(importlib.util.find_spec('backends') is None, b.canonical_name('pytorch'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "torch"]


@pytest.mark.parametrize("python, mxnet, numpy_below_2", [("3.10", True, True), ("3.12", True, True),
                                                          ("3.13", False, False), ("3.14", False, False)])
def test_extras_keep_mxnet_and_numpy_1_only_where_numpy_1_has_wheels(python, mxnet, numpy_below_2):
    """What ``.[all]`` asks for on each Python, read from pyproject's markers as pip evaluates them: MXNet
    and its numpy<2 up to 3.12; from 3.13 neither, so nothing holds numpy or JAX back there."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    env = {"python_version": python, "python_full_version": python + ".0", "extra": ""}

    def wanted(extra):
        reqs = [Requirement(r) for r in extras[extra]]
        return [r for r in reqs if r.marker is None or r.marker.evaluate(env)]

    names = {r.name: r for extra in ("torch", "tensorflow", "mxnet", "jax", "onnx") for r in wanted(extra)}
    assert ("mxnet" in names) is mxnet
    assert any(r.name == "numpy" and "<2" in str(r.specifier) for r in wanted("mxnet")) is numpy_below_2
    for name in ("jax", "jaxlib", "flax", "optax", "onnx", "onnxruntime", "onnxscript", "tensorflow-cpu", "torch"):
        spec = names[name].specifier
        assert spec and all(s.operator == ">=" for s in spec), (name, spec)  # floors: the newest that fits
    assert {"torch", "tensorflow", "mxnet", "jax", "onnx"} <= set(
        Requirement(extras["all"][0]).extras)
