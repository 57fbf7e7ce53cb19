"""Network in Network (Dive into Deep Learning, 8.3) from one spec, rendered in three frameworks."""
from .errors import NinMultiError
from .spec import NiNSpec, build_spec, chapter_spec, make_spec

__version__ = "0.1.0"
__all__ = ["NiNSpec", "NinMultiError", "build_spec", "chapter_spec", "make_spec", "__version__"]
