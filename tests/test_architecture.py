"""docs/architecture.md stays true: its layout names every module there is, and its "Adding a framework"
list, read from the page itself, holds for every registered backend (each file it names exists where its
condition says it must, each name it gives is defined there, each registry entry and extra is there)."""
import ast
import re

import pytest

from conftest import ROOT
from nin_multi import backends

DOC = ROOT / "docs" / "architecture.md"
TEXT = DOC.read_text()


def section(title: str) -> str:
    start = TEXT.index(f"## {title}\n")
    end = TEXT.find("\n## ", start + 1)
    return TEXT[start:end if end != -1 else len(TEXT)]


def layout_block() -> str:
    part = section("Layout")
    return part[part.index("```\n") + 4:part.rindex("```")]


def steps() -> list[str]:
    """The numbered items of "Adding a framework", each joined into one line."""
    items = re.split(r"\n(?=\d+\. )", section("Adding a framework"))
    return [" ".join(i.split()) for i in items if re.match(r"\d+\. ", i)]


def module_stem(name: str) -> str:
    return backends._REGISTRY[name][0].rsplit(".", 1)[1]


def defined_names(path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_the_layout_names_every_module():
    block = layout_block()
    listed = {line.split()[0] for line in block.splitlines() if line.strip()}
    for path in sorted((ROOT / "backends").glob("*.py")):
        if not path.stem.endswith("_bench"):  # one line for them all: <module>_bench.py
            assert path.name in listed, f"docs/architecture.md's layout leaves out backends/{path.name}"
    for folder in (ROOT / "nin_multi", ROOT / "nin_multi" / "cli"):
        for path in sorted(folder.glob("*.py")):
            assert path.name in listed, f"docs/architecture.md's layout leaves out {path.relative_to(ROOT)}"
    for package in ("bench", "reproduce"):
        line = next(line for line in block.splitlines() if line.strip().startswith(f"{package}/"))
        for path in sorted((ROOT / "nin_multi" / package).glob("*.py")):
            if not path.name.startswith("__"):
                assert re.search(rf"\b{path.stem}\b", line), f"the layout's {package}/ line leaves out {path.stem}"


def test_the_layout_lists_no_module_that_is_gone():
    for line in layout_block().splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.endswith(".py") and "<" not in name:
            assert any(ROOT.glob(f"**/{name}")), f"docs/architecture.md lists {name}, which no longer exists"


def test_the_adding_a_framework_list_is_read_whole():
    found = steps()
    assert len(found) == 5 and all("`" in s for s in found), found


@pytest.mark.parametrize("name", backends.ORDER)
def test_every_backend_has_what_adding_a_framework_lists(name):
    caps, stem = backends.capabilities(name), module_stem(name)
    conditions = {"DATA_PARALLEL": caps.data_parallel is not None, "TRAINS": caps.trains}
    for step in steps():
        condition = re.match(r"\d+\. If [^`:]*`(\w+)`", step)
        if condition and not conditions[condition.group(1)]:
            continue
        named = re.findall(r"`((?:backends|nin_multi|tests)/[\w<>/.]+\.py)`", step)
        paths = [p.replace("<module>", stem) for p in named]
        for path in paths:
            assert (ROOT / path).is_file(), f"{name}: {path}, named by docs/architecture.md, is missing"
        # every plain name in backquotes is defined in one of the files the step names, or its backend module
        where = [ROOT / p for p in paths] + [ROOT / "backends" / f"{stem}.py"]
        defined = set().union(*(defined_names(p) for p in where if p.is_file()))
        for ident in re.findall(r"`([A-Za-z_]\w*)`", step):
            if ident in ("TRAINS", "DATA_PARALLEL") or ident in conditions:
                assert ident in defined_names(ROOT / "backends" / f"{stem}.py")
            elif ident == "_REGISTRY":
                assert name in backends._REGISTRY
            elif (ROOT / "nin_multi" / "cli" / f"{ident}.py").is_file():
                pass  # a command's name
            elif ident == "ALIASES":
                assert any(v == name for v in backends.ALIASES.values()), f"{name} has no alias"
            else:
                assert ident in defined, f"{name}: `{ident}` (docs/architecture.md) is not defined in {paths}"


@pytest.mark.parametrize("name", backends.ORDER)
def test_every_backend_s_extra_is_in_pyproject(name):
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    assert "[project.optional-dependencies]" in section("Adding a framework")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert backends._REGISTRY[name][2] in extras
