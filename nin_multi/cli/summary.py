"""``nin-multi summary``: the layer-by-layer shape walk of a framework's model, beside the spec's."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_network_args, add_recipe_preset_arg, apply_recipe, load_weights_into, size_for_weights


def register(sub) -> None:
    p = sub.add_parser("summary", help="print the layer-by-layer shape walk of the framework's model")
    add_network_args(p)
    add_recipe_preset_arg(p)
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="walk the network of this weights file (.safetensors or .npz), holding its weights, at "
                        "the size it was trained at unless --resize is given (--variant, --in-channels, "
                        "--num-classes and --recipe do not apply)")
    p.add_argument("--diagram", default=None, metavar="PATH",
                   help="also draw the network, block by block with every layer's output shape, into PATH "
                        "(.png, .svg or .pdf)")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from nin_multi.backends import get_backend
    from nin_multi.config import param_dtype
    from nin_multi.spec import make_spec

    if a.diagram:
        from nin_multi.pictures import check_picture_path
        check_picture_path(a.diagram, "--diagram")
    if a.weights:
        backend, spec, model, dtype = from_weights(a)
        source = f", weights {Path(a.weights).name}"
    else:
        apply_recipe(a)
        backend = get_backend(a.backend)
        spec = make_spec(a.variant, a.in_channels, a.num_classes, image_size=a.resize)
        spec.walk(a.resize)  # a size the network cannot take, said before the framework builds anything
        backend.configure(None, 0)
        model = backend.build_model(spec, dtype=param_dtype(a.precision))
        dtype, source = param_dtype(a.precision), f", recipe {a.recipe}" if a.recipe else ""
    infos = spec.walk(a.resize)
    shapes = backend.layer_shapes(model, spec, a.resize)
    print(f"NiN ({spec.variant}) rendered by {backend.NAME}, input {spec.in_channels}x{a.resize}x{a.resize}, "
          f"layout {backend.LAYOUT}, {dtype}{source}")
    print(f"{'layer':<10} {'type':<14} {'output shape':<22} {'params':>10} {'multiply-adds':>15}")
    for (name, shape), info in zip(shapes, infos):
        print(f"{name:<10} {info.kind:<14} {str(shape):<22} {info.params:>10,} {info.macs:>15,}"
              + (f"  ({info.note})" if info.note else ""))
    n = backend.count_params(model)
    print(f"total parameters: {n:,} (spec: {spec.num_params:,}); "
          f"multiply-adds per image: {sum(i.macs for i in infos):,}")
    if a.diagram:
        from nin_multi.pictures import draw_network
        draw_network(spec, a.diagram, a.resize)
        print(f"network diagram written to {a.diagram}")
    return 0


def from_weights(a: argparse.Namespace):
    """(backend, spec, model, dtype) of the file's own network holding its weights, in their dtype, at the
    size it was trained at unless ``--resize`` was typed (``a.resize`` is set to the size used)."""
    a.resize = size_for_weights(a.weights, a.resize, "showing its shapes")
    backend, spec, model = load_weights_into(a.backend, a.weights, check=lambda s: s.walk(a.resize))
    return backend, spec, model, str(next(iter(backend.get_weights(model, spec).values())).dtype)
