"""MkDocs hook: pages made from the repository's own files, so the site cannot drift from the code.

- The site's home page is the README. The README's links are written from the repository's root
  (``docs/speed.md``, ``docs/img/...``); on the site the pages sit at the root, so ``docs/`` is dropped
  from them. ``notebooks/`` resolves through the ``docs/notebooks`` link to the repository's notebooks.
- The chapter page (``chapter.md``) shows each framework's code in content tabs, one tab per framework.
  Its directives, HTML comments a reader of the raw file still understands, are filled in at build time:
  ``<!-- frameworks: KEY -->`` with the code the notebooks type out (``notebooks/frameworks.py``, the
  same strings ``make_notebooks.py`` puts in the cells), ``<!-- package: train step -->`` with each
  backend's real training step (read from ``backends/*.py`` by ``ast``, nothing imported),
  ``<!-- downloads: notebooks -->`` with a download link per notebook, and ``<!-- if-exists: PATH -->`` ...
  ``<!-- end if-exists -->`` keeps its text only where the docs hold that file. A name that no longer
  exists stops the build with a message saying which, rather than showing stale code.
- Every notebook's page has, under its title, a link to download the notebook itself (mkdocs-jupyter's
  ``include_source`` copies the .ipynb beside the page).
"""
from __future__ import annotations

import ast
import html
import importlib.util
import re
import textwrap
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

#: Where each framework's training step lives in the package: (file, dotted path of the function).
PACKAGE_STEPS = {
    "torch": ("backends/torch.py", "Trainer.train_step"),
    "tensorflow": ("backends/tf.py", "Trainer._step_graph"),
    "mxnet": ("backends/mxnet.py", "Trainer.train_step"),
    "jax": ("backends/jax.py", "Trainer.__init__.train_step"),
}
CHAPTER = "chapter.md"
_DIRECTIVE = re.compile(r"^<!-- (frameworks|package|downloads): ([\w ]+) -->$", re.MULTILINE)
_IF_EXISTS = re.compile(r"^<!-- if-exists: (\S+) -->\n(.*?)^<!-- end if-exists -->\n?", re.MULTILINE | re.DOTALL)


def _root(config) -> Path:
    return Path(config["config_file_path"]).parent


def on_files(files, config):
    readme = _root(config) / "README.md"
    text = re.sub(r"\]\(docs/", "](", readme.read_text(encoding="utf-8"))
    files.append(File.generated(config, "index.md", content=text))
    return files


def _frameworks(config) -> dict:
    """``notebooks/frameworks.py``'s FRAMEWORKS, loaded from its file: it is not a package."""
    path = _root(config) / "notebooks" / "frameworks.py"
    spec = importlib.util.spec_from_file_location("_nin_notebook_frameworks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FRAMEWORKS


def _tabs(items: list[tuple[str, str]]) -> str:
    """Material content tabs, one per (label, markdown body); equal labels switch together across the page
    (the theme's ``content.tabs.link``)."""
    out = []
    for label, body in items:
        out.append(f'=== "{label}"\n\n' + textwrap.indent(body.strip("\n"), "    ") + "\n")
    return "\n".join(out)


def _code(text: str) -> str:
    return f"```python\n{text.strip(chr(10))}\n```"


def _function_source(path: Path, dotted: str) -> str:
    """The source of a function named by its dotted path (``Trainer.__init__.train_step``), dedented."""
    source = path.read_text(encoding="utf-8")
    node = ast.parse(source)
    for name in dotted.split("."):
        found = next((n for n in ast.walk(node) if n is not node and getattr(n, "name", None) == name
                      and isinstance(n, (ast.ClassDef, ast.FunctionDef))), None)
        if found is None:
            raise PluginError(f"{CHAPTER}: {path.name} has no {dotted} (no '{name}'); update PACKAGE_STEPS in "
                              f"docs/hooks.py to the function that now takes a training step")
        node = found
    lines = source.splitlines()[node.lineno - 1:node.end_lineno]
    return textwrap.dedent("\n".join(lines))


def _directive(kind: str, key: str, config) -> str:
    frameworks = _frameworks(config)
    if kind == "downloads" and key == "notebooks":
        return _downloads(frameworks)
    if kind == "frameworks":
        missing = [fw for fw, d in frameworks.items() if key not in d]
        if missing:
            raise PluginError(f"{CHAPTER}: notebooks/frameworks.py has no '{key}' for {', '.join(missing)}")
        items = []
        for d in frameworks.values():
            code = d[key] if key != "block" else d["imports"] + "\n\n\n" + d[key]
            items.append((d["title"], _code(code)))
        return _tabs(items)
    if kind == "package" and key == "train step":
        items = []
        for fw, d in frameworks.items():
            file, dotted = PACKAGE_STEPS[fw]
            body = f"`{file}`, `{dotted}`:\n\n" + _code(_function_source(_root(config) / file, dotted))
            items.append((d["title"], body))
        return _tabs(items)
    raise PluginError(f"{CHAPTER}: unknown directive <!-- {kind}: {key} -->")


def _downloads(frameworks: dict) -> str:
    """A table: each notebook's page on the site and its .ipynb file to download."""
    rows = ["| framework | the notebook on this site | download it |", "| --- | --- | --- |"]
    for d in frameworks.values():
        stem = Path(d["file"]).stem
        rows.append(f'| {d["title"]} | [{d["title"]} notebook](notebooks/{d["file"]}) | '
                    f'<a href="../notebooks/{stem}/{d["file"]}" download>{d["file"]}</a> |')
    return "\n".join(rows)


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != CHAPTER:
        return markdown
    docs = Path(config["docs_dir"])
    markdown = _IF_EXISTS.sub(lambda m: m[2] if (docs / m[1]).is_file() else "", markdown)
    return _DIRECTIVE.sub(lambda m: _directive(m[1], m[2].strip(), config), markdown)


def on_page_content(content, page, config, files):
    """Under a notebook's title, the link to download it (the file mkdocs-jupyter copies beside the page)."""
    src = page.file.src_uri
    if not (src.startswith("notebooks/") and src.endswith(".ipynb")):
        return content
    name = html.escape(Path(src).name)
    link = (f'<p class="nin-download"><a href="{name}" download>Download this notebook ({name})</a> to run it '
            f'in Jupyter wherever this project is installed.</p>')
    content, found = re.subn(r"</h1>", lambda m: m[0] + link, content, count=1)  # under the notebook's title
    return content if found else link + content
