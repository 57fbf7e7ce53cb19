"""Framework-neutral weights: arrays keyed by the spec's layer names, with the spec inside, in one of two
containers with the same header:

- ``.safetensors`` (``weights.safetensors``, what ``train`` writes): the file that ``safetensors.torch``,
  ``.tensorflow``, ``.flax`` and ``.numpy`` all load, with a bounded header and no pickle. The header is its
  string metadata: ``format``, ``layout``, ``dtype``, ``checksum`` as they are, ``spec``, ``meta`` and
  ``trained`` as JSON.
- ``.npz`` (checkpoints, and weights written before safetensors): a zip of ``.npy`` arrays plus a
  ``__header__`` member holding the header as JSON. Checkpoints stay here: they are this project's own
  resume files, never another framework's input, and their header nests the run's config and history.

Which container a file is, is read from its first bytes, not its name. Layout, declared once: conv kernels
OIHW, dense kernels (in, out), biases (out,): for a network without dense layers these are exactly the
PyTorch rendering's ``state_dict()``. A backend whose framework stores kernels otherwise (TensorFlow: HWIO)
transposes at its own edge. The arrays are float32, or float64 from a ``--precision fp64`` run (kept so
that its resume stays exact); the header says which.

``trained`` is what the network was trained at: the image size, the layout its framework was fed
(NCHW or NHWC) and the precision. Canonical weights fit any size their network takes, and nothing in the
arrays says which one they learned at; but scored at another size they score far lower, as if the
training had failed, so the size travels with them and ``evaluate`` and ``summary`` default to it (``trained_at``).
"""
from __future__ import annotations

import hashlib
import json
import math
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .config import INITS, PRECISIONS, TrainConfig
from .errors import ConfigError, DamagedFileError, WeightsError
from .fileio import atomic_write
from .spec import Conv, NiNBlock, NiNSpec
from .untrusted import (MAX_IMAGE_SIZE, MAX_STATE_BYTES, READ_ERRORS, NpzMembers, damaged, header_text, load_json,
                        spec_from_header, trained_from_header)

FORMAT = "nin_multi.weights/1"
LAYOUT = "conv OIHW, dense (in, out), bias (out,)"
_LEGACY_LAYOUT = LAYOUT + ", float32"  # files written before float64 existed: always float32
DTYPES = ("float32", "float64")
SAFETENSORS = ".safetensors"
#: Header entries that safetensors' string-only metadata holds as JSON text.
_JSON_ENTRIES = ("spec", "meta", "trained")


def check_weights(spec: NiNSpec, weights: dict, source: str = "weights") -> None:
    """Every name present, nothing extra, every shape right; the message names the first mismatch."""
    expected = spec.weight_shapes()
    for name, shape in expected.items():
        if name not in weights:
            raise WeightsError(f"{source}: no entry for {name} (expected shape {shape})")
        got = tuple(np.shape(weights[name]))
        if got != shape:
            raise WeightsError(f"{source}: {name} has shape {got}, the spec expects {shape}")
    extra = sorted(set(weights) - set(expected))
    if extra:
        raise WeightsError(f"{source}: entries {extra} are not in the spec")


STATE_PREFIX = "state."  # checkpoints: a weights file plus a backend's training state under this prefix


def save_weights(path, spec: NiNSpec, weights: dict, meta: Optional[dict] = None,
                 state: Optional[dict] = None, trained: Optional[dict] = None) -> Path:
    """Written durably (``fileio.atomic_write``): an interrupted or failed save never leaves half a file.
    The header carries a SHA-256 of every array (``checksum``) and one of the header itself
    (``header_checksum``, which covers the first), both verified on load, and, from a writer that knows it,
    what the network was trained at (``trained_entry``)."""
    check_weights(spec, weights)
    path = Path(path)
    dtype = weights_dtype(weights)
    header = {"format": FORMAT, "layout": LAYOUT, "dtype": dtype, "spec": spec.to_dict(), "meta": meta or {}}
    if trained is not None:
        try:  # a record no reader would accept is the writer's bug: found here, not by the next reader
            header["trained"] = trained_from_header(trained, path, spec)
        except DamagedFileError as e:
            raise ValueError(f"trained= for {path.name}: {e.reason}") from None
    arrays = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in weights.items()}
    arrays.update({STATE_PREFIX + k: np.asarray(v) for k, v in (state or {}).items()})
    header["checksum"] = checksum(arrays)
    header[HEADER_CHECKSUM] = header_checksum(header)
    (_write_safetensors if path.suffix == SAFETENSORS else _write_npz)(path, header, arrays)
    return path


def _write_npz(path: Path, header: dict, arrays: dict) -> None:
    members = {"__header__": np.array(json.dumps(header, sort_keys=True)), **arrays}
    # np.savez's format (an uncompressed zip of .npy files), written here because np.savez leaves its
    # ZipFile open when a write fails, and its finaliser then writes to the closed temporary file.
    with atomic_write(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, a in members.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(a), allow_pickle=False)


def _write_safetensors(path: Path, header: dict, arrays: dict) -> None:
    import safetensors.numpy

    metadata = {k: json.dumps(v, sort_keys=True) if k in _JSON_ENTRIES else str(v) for k, v in header.items()}
    with atomic_write(path) as f:
        f.write(safetensors.numpy.save(arrays, metadata=metadata))


#: The header's own SHA-256: without it a changed byte of the network description, the run's settings or
#: its history would read back as a different but valid file.
HEADER_CHECKSUM = "header_checksum"


def header_checksum(header: dict) -> str:
    """SHA-256 over the header as JSON (sorted keys, its own entry left out): the same text from the dict a
    writer holds and from the one either container's reader parses, whatever whitespace or order it stored."""
    text = json.dumps({k: v for k, v in header.items() if k != HEADER_CHECKSUM}, sort_keys=True,
                      separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def check_header_checksum(path: Path, header: dict, digest: Optional[str]) -> None:
    """Files written before the header carried its checksum have none and are read as before."""
    if HEADER_CHECKSUM in header and header[HEADER_CHECKSUM] != digest:
        why = "its header does not match the checksum stored with it"
        raise DamagedFileError(f"{path} is damaged: {why}", why)


def checksum(arrays: dict) -> str:
    """SHA-256 over every array's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode())
        h.update(a.tobytes())
    return "sha256:" + h.hexdigest()


def load_weights(path, spec: Optional[NiNSpec] = None) -> tuple[NiNSpec, dict]:
    """Read a weights file; if ``spec`` is given, refuse a file made for a different network."""
    file_spec, weights, _, _ = read_weights_file(path, spec)
    return file_spec, weights


def read_weights_file(path, spec: Optional[NiNSpec] = None) -> tuple[NiNSpec, dict, dict, dict]:
    """(spec, weights, meta, state): what a weights or checkpoint file holds (``read_weights`` has its
    whole header too)."""
    f = read_weights(path, spec)
    return f.spec, f.weights, f.meta, f.state


@dataclass(frozen=True)
class WeightsFile:
    """Everything a weights or checkpoint file holds: ``header`` as checked (``trained`` in it, if the
    file records it), ``meta`` the writer's own notes."""
    spec: NiNSpec
    weights: dict
    meta: dict
    state: dict
    header: dict


def read_weights(path, spec: Optional[NiNSpec] = None) -> WeightsFile:
    """A weights or checkpoint file, validated before it is read: the header within its limits, the
    stored network within its bounds, and every array's shape and dtype, as the container states them,
    against that network (``untrusted``); only then the arrays, and their checksum."""
    path = Path(path)
    with _reading(path), _open(path) as (header, found, read):
        digest = header_checksum(header) if isinstance(header, dict) else None
        file_spec, dtype = check_header(path, header, spec)
        check_header_checksum(path, header, digest)
        check_arrays(path, found, file_spec, dtype)
        arrays = {k: read(k) for k in found}
    # Files written before checksums existed have none and are read as before.
    if "checksum" in header and checksum(arrays) != header["checksum"]:
        why = "its arrays do not match the checksum stored with them"
        raise DamagedFileError(f"{path} is damaged: {why}", why)
    weights = {k: v for k, v in arrays.items() if not k.startswith(STATE_PREFIX)}
    state = {k[len(STATE_PREFIX):]: v for k, v in arrays.items() if k.startswith(STATE_PREFIX)}
    meta = header.get("meta", {})
    return WeightsFile(file_spec, weights, meta if isinstance(meta, dict) else {}, state, header)


def read_header(path) -> dict:
    """The header alone, checked as ``read_weights`` checks it, no array read: what a command needs to
    know before it builds anything."""
    path = Path(path)
    with _reading(path), _open(path) as (header, _, _):
        digest = header_checksum(header) if isinstance(header, dict) else None
        check_header(path, header)
        check_header_checksum(path, header, digest)
    return header


def _open(path: Path):
    return (_open_safetensors if is_safetensors(path) else _open_npz)(path)


@contextmanager
def _reading(path: Path):
    """What a container's reader raises, as the project's one-line errors."""
    from safetensors import SafetensorError

    try:
        yield
    except FileNotFoundError:
        raise WeightsError(f"weights file {path} not found") from None
    except (*READ_ERRORS, SafetensorError) as e:
        raise damaged(path, f"{type(e).__name__}: {e}") from None


# -- what the network was trained at ----------------------------------------------------------------------
RECORDED, RUN_SETTINGS, DEFAULT = "recorded", "run settings", "default"
#: The size a file that does not say is taken at: the chapter's.
DEFAULT_IMAGE_SIZE = TrainConfig.resize


def trained_entry(image_size: int, layout: str, precision: str) -> dict:
    """The header's ``trained`` entry, as every writer that knows it passes it to ``save_weights``."""
    return {"image_size": image_size, "layout": layout, "precision": precision}


@dataclass(frozen=True)
class TrainedAt:
    """The size a file's network was trained at and where that came from (``source``): the file's own
    record (``RECORDED``); for a file written before weights recorded it, the ``--resize`` of the run
    that wrote it, kept in its ``meta`` (``RUN_SETTINGS``); else the chapter's 224 (``DEFAULT``), a
    guess. ``layout`` and ``precision`` are None where the file does not say."""
    image_size: int
    source: str
    layout: Optional[str] = None
    precision: Optional[str] = None

    @property
    def recorded(self) -> bool:
        return self.source == RECORDED


def trained_at(source) -> TrainedAt:
    """What the network in ``source`` (a path, or a header as ``read_header``/``read_weights`` give it)
    was trained at. Reading a path reads its header only, checked (a hostile ``trained`` is a one-line
    ``DamagedFileError``); a ``--resize`` in an old file's meta that is not a plausible size is no
    evidence and is passed over."""
    header = source if isinstance(source, dict) else read_header(source)
    entry = header.get("trained")
    if entry is not None:
        return TrainedAt(entry["image_size"], RECORDED, entry["layout"], entry["precision"])
    meta = header.get("meta")
    config = meta.get("config") if isinstance(meta, dict) else None
    config = config if isinstance(config, dict) else {}
    size, precision = config.get("resize"), config.get("precision")
    precision = precision if isinstance(precision, str) and precision in PRECISIONS else None
    if isinstance(size, int) and not isinstance(size, bool) and 1 <= size <= MAX_IMAGE_SIZE:
        return TrainedAt(size, RUN_SETTINGS, precision=precision)
    return TrainedAt(DEFAULT_IMAGE_SIZE, DEFAULT)


def check_header(path: Path, header, spec: Optional[NiNSpec] = None) -> tuple[NiNSpec, str]:
    """(the file's network, its dtype): what the header of either container says, checked before any array
    is read (``trained`` too, where the file has it); ``spec``, if given, must be that network."""
    if not isinstance(header, dict):
        raise damaged(path, "its header is not a JSON object")
    if header.get("format") != FORMAT:
        raise WeightsError(f"{path}: format {_short(header.get('format'))}, expected {FORMAT!r}")
    if header.get("layout") not in (LAYOUT, _LEGACY_LAYOUT):
        raise WeightsError(f"{path}: kernel layout {_short(header.get('layout'))}, expected {LAYOUT!r}")
    dtype = header.get("dtype", "float32")
    if dtype not in DTYPES:
        raise damaged(path, f"its header names the dtype {_short(dtype)}, not one of {', '.join(DTYPES)}")
    if "spec" not in header:
        raise damaged(path, "its header holds no network description (spec)")
    file_spec = spec_from_header(header["spec"], path)
    if spec is not None and file_spec != spec:
        raise WeightsError(f"{path} was made for another network: {_first_difference(file_spec, spec)}")
    if "trained" in header:
        header["trained"] = trained_from_header(header["trained"], path, file_spec)
    return file_spec, dtype


def check_arrays(path, found: dict, spec: NiNSpec, dtype: str) -> None:
    """``found``: name -> (shape, numpy dtype, bytes) as the container's own headers state them, before any
    array is read. Every weight the network has, of its shape and the header's dtype; a bounded training
    state; nothing else."""
    expected = spec.weight_shapes()
    for name, shape in expected.items():
        if name not in found:
            raise DamagedFileError(f"{path}: no entry for {name} (expected shape {shape})", f"no entry for {name}")
        got_shape, got_dtype, _ = found[name]
        if tuple(got_shape) != shape:
            why = f"{name} has shape {tuple(got_shape)}, the spec expects {shape}"
            raise DamagedFileError(f"{path}: {why}", why)
        if np.dtype(got_dtype) != np.dtype(dtype):
            why = f"its arrays are not all {dtype}, as its header says"
            raise DamagedFileError(f"{path} is damaged: {why}", why)
    state = [n for n in found if n.startswith(STATE_PREFIX)]
    extra = sorted(set(found) - set(expected) - set(state))
    if extra:
        raise DamagedFileError(f"{path}: entries {extra[:5]} are not in the spec", "entries not in the spec")
    state_bytes = sum(found[n][2] for n in state)
    if state_bytes > MAX_STATE_BYTES:
        raise damaged(path, f"its training state claims {state_bytes:,} bytes, more than the {MAX_STATE_BYTES:,} "
                            f"allowed")


def written_by_nin_multi(path) -> bool:
    """Whether ``path`` is a weights or checkpoint file of this format: its header member names it (read
    within the limits above; no array is read)."""
    try:
        with NpzMembers(path) as members:
            text = header_text(members)
            header = load_json(text, path) if text is not None else None
            return isinstance(header, dict) and header.get("format") == FORMAT
    except (OSError, WeightsError):
        return False


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_safetensors(path: Path) -> bool:
    """A safetensors file starts with its header's length (8 bytes, little-endian) and the header's ``{``;
    an ``.npz`` with ``PK`` (a zip). A ``.safetensors`` name counts too, so that a damaged one is reported
    by the safetensors reader, not as a broken zip."""
    if path.suffix == SAFETENSORS:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False  # the .npz reader reports it
    return len(head) == 9 and head[8:9] == b"{"


@contextmanager
def _open_npz(path: Path):
    """(header, {name: (shape, dtype, bytes)}, read): the zip's directory and each member's ``.npy``
    header, nothing more, until ``read(name)``."""
    with NpzMembers(path) as members:
        text = header_text(members)
        if text is None:
            raise damaged(path, "no nin_multi header")
        found = {k: v[:3] for k, v in members.headers.items() if k != "__header__"}
        yield load_json(text, path), found, members.read


@contextmanager
def _open_safetensors(path: Path):
    """The same from a safetensors file: safetensors bounds its own header (100 MB) and checks that the
    arrays' offsets tile the file before anything is read; the metadata's JSON is parsed within
    ``untrusted``'s limits, and each array's shape and dtype come from the header alone."""
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as f:
        metadata = f.metadata()
        if not metadata or "format" not in metadata:
            raise WeightsError(f"{path} is a safetensors file without nin_multi's metadata (format, spec, "
                               f"layout, dtype, checksum), so nothing says which network its arrays belong to; "
                               f"write it with nin_multi.weights.save_weights, or pass that metadata to "
                               f"safetensors' save_file")
        header = {k: load_json(v, path) if k in _JSON_ENTRIES else v for k, v in metadata.items()}
        found = {}
        for name in f.keys():
            part = f.get_slice(name)
            shape, dtype = tuple(part.get_shape()), _SAFETENSORS_DTYPES.get(part.get_dtype())
            if dtype is None:
                raise damaged(path, f"{name[:60]!r} holds {part.get_dtype()[:10]}, not numbers NumPy reads")
            found[name] = (shape, dtype, math.prod(shape) * dtype.itemsize)
        yield header, found, f.get_tensor


#: safetensors' dtype names and NumPy's (bfloat16, which NumPy lacks, is not one this project writes).
_SAFETENSORS_DTYPES = {k: np.dtype(v) for k, v in {
    "F64": "float64", "F32": "float32", "F16": "float16", "I64": "int64", "I32": "int32", "I16": "int16",
    "I8": "int8", "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool"}.items()}


def _first_difference(a: NiNSpec, b: NiNSpec) -> str:
    for field in ("in_channels", "num_classes"):
        if getattr(a, field) != getattr(b, field):
            return f"{field} is {getattr(a, field)} in the file but {getattr(b, field)} here"
    for la, lb in zip(a.layers, b.layers):
        if la != lb:
            return f"layer {la.name} is {la} in the file but {lb} here"
    return f"the file has {len(a.layers)} layers, this network {len(b.layers)}"


def weights_dtype(weights: dict) -> str:
    return "float64" if any(np.asarray(w).dtype == np.float64 for w in weights.values()) else "float32"


def check_dtype_fits(weights: dict, dtype: str, source: str) -> None:
    """Float32 weights widen into a float64 model exactly; float64 weights would be rounded by a float32
    model, so that is refused rather than done silently."""
    if weights_dtype(weights) == "float64" and dtype != "float64":
        raise WeightsError(f"{source} holds float64 weights (from a --precision fp64 run) and a {dtype} model "
                           f"would round them: use --precision fp64")


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """Canonical layouts: conv OIHW (fan_in = I*k*k, fan_out = O*k*k), dense (in, out)."""
    if len(shape) == 4:
        o, i, kh, kw = shape
        return i * kh * kw, o * kh * kw
    i, o = shape
    return i, o


def _classifier_1x1s(spec: NiNSpec) -> set[str]:
    """The names of the 1x1 convs of the block whose output channels are the class scores (none when
    dense layers give the scores)."""
    last = list(spec.param_layers())[-1]
    block = next((b for b in spec.layers if isinstance(b, NiNBlock) and last in b.convs), None)
    if block is None:
        return set()
    return {c.name for c in block.convs if c.kernel == 1 and c.in_channels == c.out_channels}


def initial_weights(spec: NiNSpec, init: str = "xavier", seed: int = 0, dtype: str = "float32") -> dict:
    """The spec's initialisation drawn once in NumPy, in canonical layout, biases zero; rounded to float32
    and only then cast to ``dtype``, so a float64 run starts from exactly the point a float32 run does.

    ``xavier`` is Glorot uniform, U(-b, b) with b = sqrt(6 / (fan_in + fan_out)) (the chapter's, and
    PyTorch's ``xavier_uniform_``); ``kaiming`` is He normal, N(0, 2 / fan_in) untruncated (PyTorch's
    ``kaiming_normal_`` for ReLU). Layers are drawn in forward order from one generator seeded by ``seed``.

    ``kaiming-identity`` (the fast recipe's) is the same He draw with two changes, made because NiN's class
    scores are ReLU outputs: a class whose score is 0 for every image gets no gradient and is never
    predicted again, and under plain He init the chapter's network loses a class that way early in about
    half of its runs. The classifier block's 1x1 convs (the last block, whose ten channels are the class
    scores) start as the identity, so each score is at first one unit of the block's first conv and gets
    its gradient directly, not through two 10-unit ReLU layers that can go silent. And every other conv's
    filters have their mean taken out: its inputs are pixels or ReLU outputs, all non-negative, and a
    filter that sums to zero answers to differences between them rather than to their shared level. Dense
    layers keep the He draw.
    """
    if init not in INITS:
        raise ConfigError(f"--init must be one of {', '.join(INITS)}, got {init!r}")
    rng = np.random.default_rng(seed)
    identity = _classifier_1x1s(spec) if init == "kaiming-identity" else set()
    out = {}
    for p in spec.param_layers():
        shape = p.weight_shape if isinstance(p, Conv) else (p.in_features, p.out_features)
        fan_in, fan_out = _fans(shape)
        if init == "xavier":
            bound = np.sqrt(6.0 / (fan_in + fan_out))
            w = rng.uniform(-bound, bound, shape)
        else:
            w = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        if p.name in identity:
            w = np.eye(p.out_channels).reshape(shape)
        elif init == "kaiming-identity" and isinstance(p, Conv) and fan_in > 1:
            w = w - w.mean(axis=(1, 2, 3), keepdims=True)
        out[f"{p.name}.weight"] = w.astype(np.float32).astype(dtype)
        out[f"{p.name}.bias"] = np.zeros(shape[0] if isinstance(p, Conv) else shape[1], dtype)
    return out
