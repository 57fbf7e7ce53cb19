"""The chapter's exercises as subcommands: ``resources`` (what a variant costs) and ``compare`` (train
several variants on the same data and seed, and set their costs beside their accuracy).

``resources`` counts from the spec alone: plain Python, no NumPy, no framework import. Its memory model
(fp32, 4 bytes a value; one image's numbers are multiplied by the batch size):

* **Activation of a layer**: its output's elements x 4 bytes. A conv row stands for the conv and its
  ReLU, whose outputs have the same size. A flatten is a view of its input: 0 bytes.
* **Prediction** (no gradients): the weights, plus the largest pair of tensors alive at once at the
  batch size. Each operation (conv, ReLU, pool, global pool, dense) reads its input and writes a new
  output, so both are alive while it runs; the peak is the largest input + output of one operation,
  the input batch counting as the first operation's input. Dropout (the identity when predicting) and
  flatten (a view) write nothing new.
* **Training** (one SGD step): the weights, their gradients (as many values again), the optimizer state
  -- none here: the chapter's optimizer is plain SGD, which keeps only the learning rate (momentum would
  add one more copy of the weights, Adam two) -- and every activation kept for the backward pass, at
  the batch size. The model of what is kept: the input batch and *every* output the forward pass
  writes -- each conv's output and its ReLU's output inside the blocks, every pool, dropout, global
  pool and dense output (a flatten is a view and keeps nothing). This framework-neutral count errs
  high: PyTorch frees a conv's pre-ReLU output (ReLU's backward needs only its own output), so within
  the blocks it keeps about half, though it adds int64 max-pool indices and 1-byte dropout masks, which
  this model leaves out; measured, PyTorch keeps 1.6-1.8x less than this estimate (tests/test_exercises.py
  checks measured <= estimate <= 2 x measured). Not counted either: the gradients of activations in flight during the
  backward pass, convolution workspaces, allocator caching, the data pipeline and the framework itself.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ConfigError
from .fileio import write_csv
from .plotting import colours, figure
from .spec import VARIANTS, Conv, Dense, Dropout, Flatten, GlobalAvgPool, MaxPool, NiNBlock, NiNSpec, _pair, \
    make_spec

BYTES_PER_VALUE = 4  # fp32
OPTIMIZER = "plain SGD, no momentum: it keeps none"
COMPARE_CSV = "compare.csv"
COMPARE_PNG = "compare.png"


# -- resources ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerCost:
    """One row of the resources table; every count is per image."""

    name: str
    kind: str
    shape: tuple[int, ...]  # output shape of one image: (C, H, W) or (features,)
    params: int
    macs: int
    out_values: int  # output elements
    kept_values: int  # values this layer keeps for the backward pass (the model in the module docstring)
    peak_values: int  # largest input + output alive at once while this layer predicts

    def as_dict(self, batch: int) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d.update(activation_bytes=self.out_values * BYTES_PER_VALUE,
                 activation_bytes_at_batch=self.out_values * BYTES_PER_VALUE * batch,
                 kept_bytes=self.kept_values * BYTES_PER_VALUE)
        return d


def _size(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def layer_costs(spec: NiNSpec, image_size=224) -> list[LayerCost]:
    """Per-layer costs of one image, each conv of a block on its own row (conv + ReLU).

    The shapes come from ``spec.walk`` (which also refuses an image too small for the network); the
    rows' parameters and multiply-adds add up to the walk's.
    """
    walk = spec.walk(image_size)  # raises ImageTooSmallError / SpecError before anything else
    h, w = _pair(image_size)
    shape: tuple[int, ...] = (spec.in_channels, h, w)
    rows = []
    for layer, info in zip(spec.layers, walk):
        if isinstance(layer, NiNBlock):
            for conv in layer.convs:
                _, hh, ww = shape
                oh, ow = conv.out_hw((hh, ww))
                out = (conv.out_channels, oh, ow)
                n_in, n_out = _size(shape), _size(out)
                rows.append(LayerCost(
                    conv.name, _conv_kind(conv), out, conv.params,
                    conv.macs((oh, ow)),
                    n_out, 2 * n_out, max(n_in + n_out, 2 * n_out)))
                shape = out
            assert shape == info.nchw[1:], (layer.name, shape, info.nchw)
            continue
        out = info.nchw[1:]
        n_in, n_out = _size(shape), _size(out)
        if isinstance(layer, MaxPool):
            kind, kept, peak = f"MaxPool {layer.kernel}x{layer.kernel}/{layer.stride}", n_out, n_in + n_out
        elif isinstance(layer, Dropout):
            kind, kept, peak = f"Dropout {layer.rate:g}", n_out, 0
        elif isinstance(layer, GlobalAvgPool):
            kind, kept, peak = "GlobalAvgPool", n_out, n_in + n_out
        elif isinstance(layer, Flatten):  # a view of its input: no new memory
            kind, n_out, kept, peak = "Flatten (view)", 0, 0, 0
        elif isinstance(layer, Dense):
            kind = "Dense+ReLU" if layer.relu else "Dense"
            kept = 2 * n_out if layer.relu else n_out
            peak = max(n_in + n_out, 2 * n_out) if layer.relu else n_in + n_out
        else:  # a layer type added to the spec must get a memory model here
            raise TypeError(f"no resource model for {type(layer).__name__}")
        rows.append(LayerCost(layer.name, kind, out, info.params, info.macs, n_out, kept, peak))
        shape = out
    return rows


def _conv_kind(conv: Conv) -> str:
    k = f"Conv {conv.kernel}x{conv.kernel}"
    if conv.stride != 1:
        k += f"/{conv.stride}"
    if conv.padding:
        k += f" p{conv.padding}"
    return k + "+ReLU"


def resources(spec: NiNSpec, image_size=224, batch: int = 128) -> dict:
    """Parameters, multiply-adds and memory of one variant at one input size and batch size (bytes)."""
    if not isinstance(batch, int) or isinstance(batch, bool) or batch <= 0:
        raise ConfigError(f"--batch-size must be a positive integer, got {batch!r}")
    rows = layer_costs(spec, image_size)
    h, w = _pair(image_size)
    input_values = spec.in_channels * h * w
    params = sum(r.params for r in rows)
    assert params == spec.num_params
    weights = params * BYTES_PER_VALUE
    peak_row = max(rows, key=lambda r: r.peak_values)
    kept_per_image = (input_values + sum(r.kept_values for r in rows)) * BYTES_PER_VALUE
    return {
        "variant": spec.variant,
        "image_size": [h, w],
        "batch_size": batch,
        "bytes_per_value": BYTES_PER_VALUE,
        "layers": [r.as_dict(batch) for r in rows],
        "total": {
            "params": params,
            "macs_per_image": sum(r.macs for r in rows),
            "macs_at_batch": sum(r.macs for r in rows) * batch,
            "input_bytes_per_image": input_values * BYTES_PER_VALUE,
            "activation_bytes_per_image": sum(r.out_values for r in rows) * BYTES_PER_VALUE,
            "activation_bytes_at_batch": sum(r.out_values for r in rows) * BYTES_PER_VALUE * batch,
        },
        "prediction": {
            "weights_bytes": weights,
            "peak_pair_layer": peak_row.name,
            "peak_pair_bytes": peak_row.peak_values * BYTES_PER_VALUE * batch,
            "total_bytes": weights + peak_row.peak_values * BYTES_PER_VALUE * batch,
        },
        "training": {
            "weights_bytes": weights,
            "gradient_bytes": weights,
            "optimizer_state_bytes": 0,
            "optimizer": OPTIMIZER,
            "kept_activation_bytes_per_image": kept_per_image,
            "kept_activation_bytes": kept_per_image * batch,
            "total_bytes": 2 * weights + kept_per_image * batch,
        },
    }


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def format_resources(res: dict) -> str:
    b = res["batch_size"]
    h, w = res["image_size"]
    lines = [f"NiN ({res['variant']}) at {h}x{w}, batch {b}, fp32 ({res['bytes_per_value']} bytes a value)",
             f"{'layer':<11} {'type':<20} {'output (1 image)':<17} {'params':>11} {'mult-adds/img':>15} "
             f"{'act/img':>10} {f'act x{b}':>10} {'kept/img':>10}"]
    for r in res["layers"]:
        shape = "x".join(str(d) for d in r["shape"])
        lines.append(f"{r['name']:<11} {r['kind']:<20} {shape:<17} {r['params']:>11,} {r['macs']:>15,} "
                     f"{fmt_bytes(r['activation_bytes']):>10} {fmt_bytes(r['activation_bytes_at_batch']):>10} "
                     f"{fmt_bytes(r['kept_bytes']):>10}")
    t, p, tr = res["total"], res["prediction"], res["training"]
    lines.append(f"{'total':<11} {'':<20} {'':<17} {t['params']:>11,} {t['macs_per_image']:>15,} "
                 f"{fmt_bytes(t['activation_bytes_per_image']):>10} {fmt_bytes(t['activation_bytes_at_batch']):>10} "
                 f"{fmt_bytes(tr['kept_activation_bytes_per_image'] - t['input_bytes_per_image']):>10}")
    lines += [
        f"multiply-adds at batch {b}: {t['macs_at_batch']:,}",
        f"prediction memory: {fmt_bytes(p['total_bytes'])} = weights {fmt_bytes(p['weights_bytes'])} + largest "
        f"input+output pair at batch {b} {fmt_bytes(p['peak_pair_bytes'])} (at {p['peak_pair_layer']})",
        f"training memory:   {fmt_bytes(tr['total_bytes'])} = weights {fmt_bytes(tr['weights_bytes'])} + "
        f"gradients {fmt_bytes(tr['gradient_bytes'])} + optimizer state 0 B ({tr['optimizer']})",
        f"                   + activations kept for backward at batch {b} {fmt_bytes(tr['kept_activation_bytes'])} "
        f"({fmt_bytes(tr['kept_activation_bytes_per_image'])}/image: the input, every conv and ReLU output,",
        "                     every pool/dropout/dense output; see 'resources --help' for the model)",
    ]
    return "\n".join(lines)


# -- compare -----------------------------------------------------------------------------------------
def parse_variants(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise ConfigError("--variants needs at least one variant name, e.g. --variants chapter,one-1x1")
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variant(s) {', '.join(unknown)}; choose from: {', '.join(VARIANTS)}")
    dupes = sorted({v for v in names if names.count(v) > 1})
    if dupes:
        raise ConfigError(f"--variants names {', '.join(dupes)} more than once")
    return names


COMPARE_FIELDS = ("variant", "params", "macs_per_image", "examples_per_sec", "test_acc", "train_loss",
                  "train_acc", "train_seconds", "run_dir")


def compare(variants, cfg_kwargs: dict, out, overwrite: bool = False, log=print) -> list[dict]:
    """Train each variant with the shared driver, same data, seed and recipe; write the table and figure.

    ``cfg_kwargs`` are ``TrainConfig`` fields (all but ``variant`` and ``out``). Every variant is checked
    against the input size before any training starts. Returns the table's rows.
    """
    from .config import TrainConfig
    from .run import prepare_dir, release_dir
    from .train import train

    cfgs = [TrainConfig(**{**cfg_kwargs, "variant": v}) for v in variants]
    specs = []
    for cfg in cfgs:
        spec = make_spec(cfg.variant, cfg.in_channels, cfg.num_classes, cfg.dropout, cfg.resize)
        spec.walk(cfg.resize)  # refuse a size some variant cannot take before training any
        specs.append(spec)
    out = prepare_dir(out, overwrite=overwrite)
    rows = []
    for cfg, spec in zip(cfgs, specs):
        run_dir, history = train(dataclasses.replace(cfg, out=str(out / cfg.variant)), log=log)
        last = history[-1]
        rows.append({
            "variant": cfg.variant, "params": spec.num_params,
            "macs_per_image": sum(i.macs for i in spec.walk(cfg.resize)),
            "examples_per_sec": last["examples_per_sec"], "test_acc": last["test_acc"],
            "train_loss": last["train_loss"], "train_acc": last["train_acc"],
            "train_seconds": sum(r["seconds"] for r in history), "run_dir": str(run_dir),
        })
        write_compare_csv(rows, out / COMPARE_CSV)  # after each variant: a stopped comparison keeps its rows
    c = cfgs[0]
    title = (f"NiN variants on {c.backend}: {c.epochs} epoch(s), {c.resize}x{c.resize}, batch {c.batch_size}, "
             f"lr {c.lr:g}, seed {c.seed}" + (f", {c.subset} train images" if c.subset else ""))
    plot_compare(rows, out / COMPARE_PNG, title)
    release_dir(out)
    return rows


def write_compare_csv(rows: list[dict], path: Path) -> None:
    write_csv(path, rows, COMPARE_FIELDS)


def format_compare(rows: list[dict]) -> str:
    lines = [f"{'variant':<12} {'params':>11} {'mult-adds/img':>15} {'examples/s':>11} {'test acc':>9} "
             f"{'train loss':>11} {'train s':>8}"]
    for r in rows:
        lines.append(f"{r['variant']:<12} {r['params']:>11,} {r['macs_per_image']:>15,} "
                     f"{r['examples_per_sec']:>11.1f} {r['test_acc']:>9.3f} {r['train_loss']:>11.4f} "
                     f"{r['train_seconds']:>8.1f}")
    return "\n".join(lines)


def plot_compare(rows: list[dict], dest, title: str = "") -> None:
    """Four bar charts side by side, one bar per variant: parameters, multiply-adds, speed, accuracy."""
    panels = [("params", "parameters (millions)", 1e-6), ("macs_per_image", "multiply-adds per image (G)", 1e-9),
              ("examples_per_sec", "training examples/sec (last epoch)", 1), ("test_acc", "final test accuracy", 1)]
    names = [r["variant"] for r in rows]
    palette = colours()
    with figure(dest, title, title_size=9, nrows=1, ncols=4, squeeze=False,
                figsize=(max(12.0, 4 * (1 + 0.9 * len(rows))), 3.8)) as (fig, axes):
        for ax, (key, label, scale) in zip(axes[0], panels):
            vals = [r[key] * scale for r in rows]
            bars = ax.bar(range(len(rows)), vals, color=[palette[i % len(palette)] for i in range(len(rows))])
            ax.bar_label(bars, labels=[f"{v:.3g}" for v in vals], fontsize=7)
            ax.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize=8)
            ax.set_title(label, fontsize=9)
            ax.grid(axis="y", alpha=0.3)
            if key == "test_acc":
                ax.set_ylim(0, 1)
