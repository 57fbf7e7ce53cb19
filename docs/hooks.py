"""MkDocs hook: the site's home page is the README, so the two never drift apart.

The README's links are written from the repository's root (``docs/speed.md``, ``docs/img/...``); on the
site the pages sit at the root, so ``docs/`` is dropped from them. ``notebooks/`` resolves through the
``docs/notebooks`` link to the repository's notebooks folder.
"""
import re
from pathlib import Path

from mkdocs.structure.files import File


def on_files(files, config):
    readme = Path(config["config_file_path"]).parent / "README.md"
    text = re.sub(r"\]\(docs/", "](", readme.read_text(encoding="utf-8"))
    files.append(File.generated(config, "index.md", content=text))
    return files
