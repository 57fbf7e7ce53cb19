"""``nin-multi convert``: canonical weights written in a framework's native format, or in the other
portable container (.safetensors / .npz, no framework needed)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import BACKEND_HELP, load_weights_into

#: The portable containers (``nin_multi.weights``): written from the file's own arrays, no framework.
PORTABLE_SUFFIXES = (".safetensors", ".npz")


def register(sub) -> None:
    from nin_multi.backends import ORDER, capabilities

    p = sub.add_parser("convert", help="write canonical weights in a framework's native format, or as "
                                       ".safetensors / .npz")
    p.add_argument("--backend", "-b", default=None, help=BACKEND_HELP + " (for a native format)")
    p.add_argument("--weights", required=True, help="canonical weights: .safetensors or .npz")
    p.add_argument("--out", required=True, help="destination: " + ", ".join(
        f"{' or '.join(capabilities(n).native_suffixes)} ({n})" for n in ORDER) + " with --backend; "
        f"{' or '.join(PORTABLE_SUFFIXES)} (portable, no framework needed)")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from nin_multi.backends import canonical_name, capabilities
    from nin_multi.errors import ConfigError, NinMultiError, WriteError
    from nin_multi.fileio import atomic_path

    if a.out.endswith(PORTABLE_SUFFIXES):
        return convert_portable(a.weights, a.out)
    if a.backend is None:
        raise ConfigError(f"--out {a.out}: name a framework with --backend to write its native format, or give "
                          f"--out a {' or '.join(PORTABLE_SUFFIXES)} name for the portable formats")
    suffixes = capabilities(a.backend).native_suffixes
    if not a.out.endswith(suffixes):
        raise ConfigError(f"--out for {canonical_name(a.backend)} must end in {' or '.join(suffixes)}, got {a.out}")
    parent = Path(a.out).parent
    if not parent.is_dir():
        raise ConfigError(f"--out {a.out}: directory {parent} does not exist")
    backend, spec, model = load_weights_into(a.backend, a.weights)
    with atomic_path(a.out) as tmp:  # the framework writes a temporary file; renamed once complete
        try:
            backend.save_native(model, str(tmp))
        except (OSError, NinMultiError):
            raise
        except Exception as e:  # PyTorch and MXNet report a failed write as their own RuntimeError/MXNetError
            what = str(e).strip().splitlines()[-1][:200] if str(e).strip() else ""
            raise WriteError(f"could not write {a.out}: {backend.NAME} failed to save it ({type(e).__name__}: "
                             f"{what}); the file was left as it was. Check the free space, the file-size limit "
                             f"(ulimit -f) and the permissions there") from None
    print(f"wrote {a.out} ({backend.NAME} native format, {spec.num_params:,} parameters, "
          f"{next(iter(backend.get_weights(model, spec).values())).dtype})")
    return 0


def convert_portable(source: str, out: str) -> int:
    """The same arrays, header and metadata in the other container, what the network was trained at
    included (a checkpoint's training state is left behind: the result is a weights file)."""
    from nin_multi.errors import ConfigError
    from nin_multi.weights import read_weights, save_weights, weights_dtype

    if not Path(out).parent.is_dir():
        raise ConfigError(f"--out {out}: directory {Path(out).parent} does not exist")
    f = read_weights(source)
    spec, weights = f.spec, f.weights
    save_weights(out, spec, weights, meta=f.meta, trained=f.header.get("trained"))
    print(f"wrote {out} ({Path(out).suffix.lstrip('.')}, {spec.num_params:,} parameters, {weights_dtype(weights)})")
    return 0
