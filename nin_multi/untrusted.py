"""Files from users are read as if hostile: every size is checked before anything is allocated.

A weights file (or a checkpoint) names its arrays, their shapes and dtypes twice: in the ``.npy`` header
of each zip member and, through the network description (the spec) in its JSON header, in what the
network needs. Both are read and compared before a single array is: a member that claims an 8 TiB array,
a header nested ten thousand deep, an unknown layer type or a padding of 2,000 each end in one line, and
the memory spent on a hostile file is bounded by the limits below, not by what the file claims. The
bounds are far above any network this project builds (the deepest variant has 28 layers, the widest
layer 4,096 units) and far below what a machine could not hold.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tokenize
import typing
import zipfile
from typing import Optional

import numpy as np

from . import spec as spec_mod
from .config import PRECISIONS
from .errors import ConfigError, DamagedFileError, SpecError

MAX_HEADER_CHARS = 8 << 20  # a checkpoint's header holds its run's config and metrics: ~200 bytes an epoch
MAX_JSON_DEPTH = 32  # ours is 5 deep
MAX_MEMBERS = 4096
MAX_LAYERS = 256
MAX_CONVS_PER_BLOCK = 16
MAX_PARAMS = 1 << 30  # 4 GiB of float32 weights
MAX_STATE_BYTES = 64 << 20  # a trainer's extra state: RNG states, step counts, optimizer scalars
#: (low, high) of every integer field a layer or the spec may have; a field not named here is refused.
INT_BOUNDS = {
    "in_channels": (1, 1 << 16), "out_channels": (1, 1 << 16), "num_classes": (1, 1 << 16),
    "kernel": (1, 64), "stride": (1, 64), "padding": (0, 63),
    "in_features": (1, 1 << 24), "out_features": (1, 1 << 24),
}
MAX_NAME = 64
#: The layouts images are fed in: PyTorch's and MXNet's NCHW, TensorFlow's and JAX's NHWC.
IMAGE_LAYOUTS = ("NCHW", "NHWC")
#: An image side far beyond any a network is trained at (the memory check refuses far smaller ones).
MAX_IMAGE_SIZE = 1 << 16
_NPY_MAGIC = b"\x93NUMPY"
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
#: What reading a damaged zip or ``.npy`` raises besides ValueError and OSError: zipfile's refusals of a flag
#: or method it does not implement (NotImplementedError) or of an encrypted member (RuntimeError), and NumPy's
#: header parser, which falls back to ``tokenize`` on a header it cannot evaluate (TokenError, SyntaxError).
READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError, RuntimeError,
               tokenize.TokenError, SyntaxError)


def damaged(path, why: str) -> DamagedFileError:
    return DamagedFileError(f"{path} is damaged or not a nin_multi weights file ({why})", why)


# -- JSON ---------------------------------------------------------------------------------------------------
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')


def json_depth(text: str) -> int:
    """How deeply arrays and objects nest in ``text`` (linear time: strings are skipped first)."""
    depth = deepest = 0
    for ch in _STRINGS.sub("", text):
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def load_json(text: str, path, max_chars: int = MAX_HEADER_CHARS, max_depth: int = MAX_JSON_DEPTH):
    """``json.loads`` within a size and a depth, so neither memory nor Python's recursion runs out."""
    if len(text) > max_chars:
        raise damaged(path, f"its header is {len(text):,} characters, more than the {max_chars:,} allowed")
    depth = json_depth(text)
    if depth > max_depth:
        raise damaged(path, f"its header nests {depth} levels deep, more than the {max_depth} allowed")
    try:
        return json.loads(text)
    except ValueError as e:
        raise damaged(path, f"its header is not JSON ({e})") from None


# -- the network description ------------------------------------------------------------------------------
def spec_from_header(d, path) -> spec_mod.NiNSpec:
    """The stored spec, each field checked for type and range (``INT_BOUNDS``), the parameters counted
    before any array is read, and the layers checked to fit together (``NiNSpec.walk``)."""
    if not isinstance(d, dict):
        raise damaged(path, "its header holds no network description (spec)")
    _fields(d, {"in_channels": int, "num_classes": int, "layers": list, "variant": str}, "the spec", path,
            optional={"variant"})
    layers = d["layers"]
    if not 0 < len(layers) <= MAX_LAYERS:
        raise damaged(path, f"its network has {len(layers)} layers (1 to {MAX_LAYERS} allowed)")
    built, names = [], set()
    for ld in layers:
        layer = _layer(ld, path)
        for n in [layer.name] + [c.name for c in getattr(layer, "convs", ())]:
            if n in names:
                raise damaged(path, f"its network names two layers {n!r}")
            names.add(n)
        built.append(layer)
    spec = spec_mod.NiNSpec(d["in_channels"], d["num_classes"], tuple(built), d.get("variant", "chapter"))
    _check_chain(spec, path)
    if spec.num_params > MAX_PARAMS:
        raise damaged(path, f"its network has {spec.num_params:,} parameters, more than the {MAX_PARAMS:,} allowed")
    return spec


def _layer(ld, path):
    if not isinstance(ld, dict) or not isinstance(ld.get("type"), str):
        raise damaged(path, "a layer of its network has no type")
    kind = spec_mod._LAYER_TYPES.get(ld["type"])
    if kind is None:
        raise damaged(path, f"its network has a layer of unknown type {ld['type'][:40]!r} (known: "
                            f"{', '.join(spec_mod._LAYER_TYPES)})")
    ld = {k: v for k, v in ld.items() if k != "type"}
    if kind is spec_mod.NiNBlock:
        _fields(ld, {"name": str, "convs": list}, f"layer {ld.get('name')!r}", path)
        if not 0 < len(ld["convs"]) <= MAX_CONVS_PER_BLOCK:
            raise damaged(path, f"block {ld['name']!r} has {len(ld['convs'])} convolutions (1 to "
                                f"{MAX_CONVS_PER_BLOCK} allowed)")
        return spec_mod.NiNBlock(ld["name"], tuple(_dataclass(spec_mod.Conv, c, path) for c in ld["convs"]))
    return _dataclass(kind, ld, path)


def _dataclass(kind, d, path):
    hints = typing.get_type_hints(kind)
    required = {f.name for f in dataclasses.fields(kind)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    if not isinstance(d, dict):
        raise damaged(path, f"a {kind.__name__} of its network is not an object")
    _fields(d, {f.name: hints[f.name] for f in dataclasses.fields(kind)}, f"{kind.__name__} {d.get('name')!r}",
            path, optional=set(hints) - required)
    if kind is spec_mod.Conv and d.get("padding", 0) >= d["kernel"]:
        raise damaged(path, f"convolution {d['name']!r} pads by {d['padding']}, not less than its kernel "
                            f"{d['kernel']}: no network of this project does")
    return kind(**d)


def _fields(d: dict, types: dict, what: str, path, optional=frozenset()) -> None:
    """Exactly the fields of ``types`` (those in ``optional`` may be absent), each of its type and range."""
    unknown = sorted(set(d) - set(types))
    missing = sorted(set(types) - set(d) - set(optional))
    if unknown or missing:
        why = f"unknown field {unknown[0][:40]!r}" if unknown else f"no field {missing[0]!r}"
        raise damaged(path, f"{what} of its network has {why}")
    for key, value in d.items():
        want = types[key]
        if not _valid(value, want, key):
            raise damaged(path, f"{what} of its network has {key} = {_short(value)}, "
                                f"{_expected(want, key)}")


def _valid(value, want, key: str) -> bool:
    if isinstance(value, bool):
        return want is bool
    if want is float:
        return isinstance(value, (int, float)) and 0 <= value < 1
    if not isinstance(value, want):
        return False
    if want is str:
        return 0 < len(value) <= MAX_NAME
    if want is int:
        low, high = INT_BOUNDS.get(key, (1, 0))
        return low <= value <= high
    return True


def _check_chain(spec: spec_mod.NiNSpec, path) -> None:
    """Each convolution takes the channels the one before it gives, each dense layer the features: what
    a framework would otherwise find out in a traceback while building the model."""
    channels, features = spec.in_channels, None
    for p in spec.param_layers():
        if isinstance(p, spec_mod.Conv):
            if p.in_channels != channels:
                raise damaged(path, f"its layer {p.name} takes {p.in_channels} channels but is given {channels}")
            channels = p.out_channels
        else:
            if features is not None and p.in_features != features:
                raise damaged(path, f"its layer {p.name} takes {p.in_features} features but is given {features}")
            features = p.out_features


def _expected(want, key) -> str:
    if want is int and key in INT_BOUNDS:
        return f"not an integer from {INT_BOUNDS[key][0]} to {INT_BOUNDS[key][1]}"
    if want is float:
        return "not a rate from 0 to 1"
    if want is str:
        return f"not a name of 1 to {MAX_NAME} characters"
    return f"not a {getattr(want, '__name__', want)}"


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- what the network was trained at ---------------------------------------------------------------------
_TRAINED = "its record of what it was trained at"


def trained_from_header(d, path, spec: spec_mod.NiNSpec) -> dict:
    """The ``trained`` entry, each field checked for type and range and the size for fitting the stored
    network: it chooses the size ``evaluate`` and ``summary`` run at, so a lie in it would otherwise end
    in a framework's traceback or a score that looks like a failed training."""
    if not isinstance(d, dict):
        raise damaged(path, f"{_TRAINED} (trained) is not a JSON object")
    fields = ("image_size", "layout", "precision")
    unknown, missing = sorted(set(d) - set(fields)), [f for f in fields if f not in d]
    if unknown or missing:
        why = f"unknown field {unknown[0][:40]!r}" if unknown else f"no field {missing[0]!r}"
        raise damaged(path, f"{_TRAINED} has {why}")
    size = d["image_size"]
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_IMAGE_SIZE:
        raise damaged(path, f"{_TRAINED} has image_size = {_short(size)}, not an integer from 1 to "
                            f"{MAX_IMAGE_SIZE}")
    for key, known in (("layout", IMAGE_LAYOUTS), ("precision", PRECISIONS)):
        if not isinstance(d[key], str) or d[key] not in known:
            raise damaged(path, f"{_TRAINED} has {key} = {_short(d[key])}, not one of {', '.join(known)}")
    try:
        spec.walk(size)
    except SpecError:
        raise damaged(path, f"{_TRAINED} says {size}x{size}, a size its network cannot take") from None
    return dict(d)


# -- the arrays of an .npz --------------------------------------------------------------------------------
class NpzMembers:
    """An ``.npz`` opened for checking: the zip's directory and every member's ``.npy`` header (name,
    shape, dtype) read, and no array yet. ``read(name)`` reads one array once it has been checked."""

    def __init__(self, path):
        self.path = path
        try:
            self.zf = zipfile.ZipFile(path)
        except FileNotFoundError:
            raise
        except zipfile.BadZipFile as e:
            raise damaged(path, _not_a_zip(path, e)) from None
        except READ_ERRORS as e:
            raise damaged(path, f"{type(e).__name__}: {e}") from None
        try:
            self.headers = self._headers()
        except BaseException:
            self.zf.close()
            raise

    def _headers(self) -> dict:
        infos = self.zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise damaged(self.path, f"it has {len(infos):,} members, more than the {MAX_MEMBERS:,} allowed")
        out = {}
        for info in infos:
            name = info.filename
            if not name.endswith(".npy") or name[:-4] in out:
                raise damaged(self.path, f"member {name[:60]!r} is not one array of an .npz")
            try:
                with self.zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version not in _HEADER_READERS:
                        raise ValueError(f".npy format version {version} (1.0 and 2.0 are read)")
                    shape, _, dtype = _HEADER_READERS[version](f, max_header_size=10000)
                    offset = f.tell()
            except READ_ERRORS as e:
                raise damaged(self.path, f"member {name[:60]!r}: {type(e).__name__}: {e}") from None
            if dtype.hasobject or dtype.kind not in "biufU":
                raise damaged(self.path, f"member {name[:60]!r} holds {dtype}, not numbers")
            nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if offset + nbytes != info.file_size:
                raise damaged(self.path, f"member {name[:60]!r} claims a {shape} {dtype} array "
                                         f"({nbytes:,} bytes) in {info.file_size - offset:,} bytes")
            out[name[:-4]] = (tuple(shape), dtype, nbytes, info)
        return out

    def read(self, name: str) -> np.ndarray:
        _, _, _, info = self.headers[name]
        try:
            with self.zf.open(info) as f:
                return np.lib.format.read_array(f, allow_pickle=False)
        except READ_ERRORS as e:
            raise damaged(self.path, f"{type(e).__name__}: {e}") from None

    def close(self) -> None:
        self.zf.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _not_a_zip(path, e) -> str:
    try:
        with open(path, "rb") as f:
            start = f.read(8)
    except OSError:
        start = b""
    if start.startswith(_NPY_MAGIC):
        return "a single NumPy .npy array, not an .npz of weights with their network"
    if not start:
        return "an empty file"
    if not start.startswith(b"PK"):
        return f"not a zip archive: it begins with {start!r}"
    return f"BadZipFile: {e}"


def header_text(members: NpzMembers, max_chars: int = MAX_HEADER_CHARS) -> Optional[str]:
    """The ``__header__`` member's JSON text, its size bounded before it is read; None if absent."""
    if "__header__" not in members.headers:
        return None
    shape, dtype, nbytes, _ = members.headers["__header__"]
    if shape != () or dtype.kind != "U":
        raise damaged(members.path, "its header is not one string")
    if nbytes // 4 > max_chars:
        raise damaged(members.path, f"its header is {nbytes // 4:,} characters, more than the {max_chars:,} "
                                    f"allowed")
    return str(members.read("__header__"))


# -- memory at the requested size -------------------------------------------------------------------------
def forward_bytes(spec: spec_mod.NiNSpec, image_size, batch: int, itemsize: int = 4) -> int:
    """A lower bound of what one forward pass holds at once: the weights and the largest pair of one
    layer's input and output at this batch (the ``resources`` command counts it layer by layer)."""
    h, w = spec_mod._pair(image_size)
    previous, peak = batch * spec.in_channels * h * w, 0
    for info in spec.walk(image_size, batch, complete=False):
        values = math.prod(info.nchw)
        peak, previous = max(peak, previous + values), values
    return (spec.num_params + peak) * itemsize


def physical_memory() -> Optional[int]:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None  # not POSIX: left to the framework


def check_memory(spec: spec_mod.NiNSpec, image_size, batch: int, itemsize: int = 4) -> None:
    """Refuse, before anything is allocated, a network and size whose forward pass alone would need more
    than this machine's memory (a hostile file's spec, or a --resize or --batch-size typed too large)."""
    need, have = forward_bytes(spec, image_size, batch, itemsize), physical_memory()
    if have is not None and need > have:
        h, w = spec_mod._pair(image_size)
        raise ConfigError(f"at {h}x{w} with a batch of {batch} this network needs at least {need / 2**30:,.1f} "
                          f"GiB for one forward pass, more than this machine's {have / 2**30:,.1f} GiB of memory: "
                          f"use a smaller --resize or --batch-size")
