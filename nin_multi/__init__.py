"""Network in Network (Dive into Deep Learning, 8.3) from one spec, rendered in several frameworks."""
import importlib.util
import sys
from pathlib import Path

from .errors import NinMultiError
from .spec import NiNSpec, build_spec, chapter_spec, make_spec

__version__ = "0.1.0"
__all__ = ["NiNSpec", "NinMultiError", "build_spec", "chapter_spec", "make_spec", "__version__"]


def _mount_backends() -> None:
    """The renderings live in the repository's top-level ``backends/`` folder (where people look for
    them) but belong to this package: a wheel installs them as ``nin_multi/backends`` (pyproject's
    ``package-dir``), so nothing named ``backends`` lands in site-packages. A source checkout or an
    editable install has no ``nin_multi/backends`` folder; there the sibling folder is mounted under
    the same name, so every import reads ``nin_multi.backends`` whichever way the package was found."""
    here = Path(__file__).resolve().parent
    folder = here.parent / "backends"
    if (here / "backends").is_dir() or "nin_multi.backends" in sys.modules \
            or not (folder / "__init__.py").is_file():
        return
    spec = importlib.util.spec_from_file_location("nin_multi.backends", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)


_mount_backends()
