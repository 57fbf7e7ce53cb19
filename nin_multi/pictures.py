"""The pictures a learner of the chapter expects: the network drawn from its spec, and what trained weights
get right and wrong (a gallery of test images, a confusion matrix).

The diagram is drawn from ``NiNSpec`` and its ``walk`` alone, never typed by hand, so it shows whichever
variant the user builds (``summary --variant no-1x1 --diagram net.png``) and cannot disagree with the
network the frameworks render. The gallery and the confusion matrix take predictions, not a framework:
``evaluate --gallery/--confusion`` computes them in any backend. Figures are written atomically, in the
format their file name ends in. numpy and matplotlib load only when a picture is drawn: the command line
reads ``GALLERY_SIZE`` for its help at every start.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .errors import ConfigError
from .plotting import figure, pyplot
from .spec import (AvgPool, ChannelDropout, Conv, Dense, Dropout, Flatten, GlobalAvgPool, MaxPool, NiNBlock, NiNSpec,
                   image_hw)

if TYPE_CHECKING:
    import numpy as np

#: The file endings a picture option takes: matplotlib's raster and vector formats a page or a paper embeds.
FORMATS = ("png", "svg", "pdf")
#: How many test images the gallery shows: the first ones of the test split, so two runs show the same images.
GALLERY_SIZE = 24
_GALLERY_COLUMNS = 8


def check_picture_path(path, option: str) -> Path:
    """Refuse a picture file name matplotlib cannot write, or one in a folder that does not exist, before
    any work is done (a long evaluation that fails at its last step helps no one)."""
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise ConfigError(f"{option} {path}: the file name must end in "
                          + ", ".join(f".{f}" for f in FORMATS[:-1]) + f" or .{FORMATS[-1]} (the picture's format)")
    if not path.parent.is_dir():
        raise ConfigError(f"{option} {path}: the folder {path.parent} does not exist; create it first")
    return path


# -- the network ------------------------------------------------------------------------------------------
def _conv_text(conv: Conv) -> str:
    k = f"{conv.kernel}\u00d7{conv.kernel} conv"
    extra = [f"stride {conv.stride}"] * (conv.stride != 1) + [f"pad {conv.padding}"] * (conv.padding != 0)
    return f"{k}, {conv.out_channels} ch" + (f" ({', '.join(extra)})" if extra else "") + ", ReLU"


def _layer_text(layer) -> str:
    if isinstance(layer, MaxPool):
        return f"{layer.kernel}\u00d7{layer.kernel} max-pool, stride {layer.stride}"
    if isinstance(layer, ChannelDropout):
        return f"channel dropout, p = {layer.rate:g}"
    if isinstance(layer, Dropout):
        return f"dropout, p = {layer.rate:g}"
    if isinstance(layer, AvgPool):
        return f"{layer.kernel}\u00d7{layer.kernel} average pool, stride {layer.stride}"
    if isinstance(layer, GlobalAvgPool):
        return "global average pool"
    if isinstance(layer, Flatten):
        return "flatten"
    if isinstance(layer, Dense):
        return f"dense {layer.in_features:,} \u2192 {layer.out_features:,}" + (", ReLU" if layer.relu else "")
    return type(layer).__name__


def _shape_text(shape: Sequence[int]) -> str:
    return " \u00d7 ".join(f"{s:,}" for s in shape[1:])


def network_rows(spec: NiNSpec, image_size=224) -> list[tuple[str, str, str, str, str | None]]:
    """The diagram's rows, input first: (what the layer does, its output shape C x H x W, its parameters,
    its kind for the colour, the NiN block it belongs to or None). Shapes come from ``spec.walk``, and
    inside a block from each convolution's own arithmetic (``Conv.out_hw``)."""
    infos = spec.walk(image_size)
    hw = image_hw(image_size)
    rows = [(f"input image, {spec.in_channels} channel" + "s" * (spec.in_channels != 1),
             f"{spec.in_channels} \u00d7 {hw[0]} \u00d7 {hw[1]}", "", "other", None)]
    for layer, info in zip(spec.layers, infos):
        if isinstance(layer, NiNBlock):
            for conv in layer.convs:
                hw = conv.out_hw(hw)
                rows.append((_conv_text(conv), f"{conv.out_channels} \u00d7 {hw[0]} \u00d7 {hw[1]}",
                             f"{conv.params:,}", "conv", layer.name))
            continue
        kind = "pool" if isinstance(layer, (MaxPool, AvgPool, GlobalAvgPool)) else (
            "dense" if isinstance(layer, Dense) else "other")
        rows.append((_layer_text(layer), _shape_text(info.nchw), f"{info.params:,}" if info.params else "",
                     kind, None))
        if len(info.nchw) == 4:
            hw = info.nchw[2:]
    return rows


def draw_network(spec: NiNSpec, dest, image_size=224) -> Path:
    """The network as a column of boxes, input at the top: each NiN block framed with its convolutions
    (kernel, stride, padding, channels), every layer's output shape and parameters beside it, as the
    chapter's figure stacks the blocks (``network_rows`` says what is drawn)."""
    infos = spec.walk(image_size)
    rows = network_rows(spec, image_size)
    colours = {"conv": "#9fc5e8", "pool": "#f9cb9c", "other": "#eeeeee", "dense": "#b6d7a8"}
    pyplot()  # the file-only backend, before matplotlib's patches load
    from matplotlib.patches import FancyBboxPatch

    height = 0.42 * len(rows) + 1.3
    title = (f"NiN ({spec.variant}) at {image_size}\u00d7{image_size}: {spec.num_params:,} parameters, "
             f"{sum(i.macs for i in infos) / 1e6:,.0f} M multiply-adds per image")
    with figure(dest, title=title, title_size=10.5, figsize=(7.4, height)) as (fig, ax):
        ax.set_xlim(0, 10)
        ax.set_ylim(len(rows) + 0.2, -1.0)
        ax.axis("off")
        ax.text(2.9, -0.55, "layer", ha="center", fontsize=9, weight="bold")
        ax.text(7.25, -0.55, "output (C \u00d7 H \u00d7 W)", ha="center", fontsize=9, weight="bold")
        ax.text(9.55, -0.55, "params", ha="center", fontsize=9, weight="bold")
        blocks: dict[str, list[int]] = {}
        for i, (text, shape, params, kind, block) in enumerate(rows):
            if block:
                blocks.setdefault(block, []).append(i)
            x0 = 0.9 if block else 0.6
            width = 4.0 if block else 4.6
            ax.add_patch(FancyBboxPatch((x0, i + 0.12), width, 0.76, boxstyle="round,pad=0.0,rounding_size=0.12",
                                        fc=colours[kind], ec="#555555", lw=0.8))
            ax.text(x0 + width / 2, i + 0.5, text, ha="center", va="center", fontsize=9)
            if shape:
                ax.text(7.25, i + 0.5, shape, ha="center", va="center", fontsize=9.5)
            if params:
                ax.text(10.0, i + 0.5, params, ha="right", va="center", fontsize=9)
            if i + 1 < len(rows) and not (block and rows[i + 1][4] == block):
                ax.annotate("", (2.9, i + 1.12), (2.9, i + 0.88), arrowprops=dict(arrowstyle="->", lw=0.8))
        for name, members in blocks.items():
            top, bottom = members[0], members[-1] + 1
            ax.add_patch(FancyBboxPatch((0.45, top + 0.04), 4.9, bottom - top - 0.08,
                                        boxstyle="round,pad=0.0,rounding_size=0.18", fc="none",
                                        ec="#1f4e79", lw=1.4))
            ax.text(0.3, (top + bottom) / 2, name.replace("nin", "NiN block "), rotation=90, ha="center",
                    va="center", fontsize=8.5, color="#1f4e79", weight="bold")
    return Path(dest)


# -- what trained weights get right and wrong ---------------------------------------------------------------
def confusion_counts(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted]: how many test images of each class went to each class."""
    import numpy as np

    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return counts


def draw_confusion(counts: np.ndarray, class_names: Sequence[str], dest, title: str = "") -> Path:
    """The confusion matrix as counts in cells, true class down the side, predicted along the bottom; the
    diagonal (right answers) in blue, mistakes in red, so the classes the network mixes up stand out."""
    import numpy as np

    n = counts.shape[0]
    right = np.where(np.eye(n, dtype=bool), counts, 0)
    wrong = np.where(np.eye(n, dtype=bool), 0, counts)
    rgba = np.ones((n, n, 4))
    peak = max(int(counts.max()), 1)
    pyplot()
    from matplotlib import colormaps
    blues, reds = colormaps["Blues"], colormaps["Reds"]
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                rgba[i, j] = blues(0.15 + 0.75 * right[i, j] / peak) if i == j else reds(
                    0.15 + 0.85 * min(1.0, wrong[i, j] / max(1, wrong.max())))
    with figure(dest, figsize=(7.2, 6.4)) as (fig, ax):
        ax.imshow(rgba, interpolation="nearest")
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    dark = float(np.dot(rgba[i, j, :3], (0.299, 0.587, 0.114))) < 0.55  # the cell's luminance
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=9,
                            color="white" if dark else "black")
        ax.set_xticks(range(n), class_names, rotation=45, ha="right")
        ax.set_yticks(range(n), class_names)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        total, correct = int(counts.sum()), int(np.trace(counts))
        ax.set_title(title or f"{correct} of {total} test images right ({correct / max(total, 1):.3f})", fontsize=10)
    return Path(dest)


def draw_gallery(images: np.ndarray, labels: np.ndarray, predictions: np.ndarray, class_names: Sequence[str],
                 dest, title: str = "") -> Path:
    """Test images as the network saw them before resizing, each titled with its predicted and true class:
    a right answer in black, a mistake in red with a red frame, so a learner sees which look-alike classes
    (shirt, T-shirt, pullover, coat) are confused."""
    import numpy as np

    n = len(images)
    cols = min(_GALLERY_COLUMNS, n)
    rows_n = -(-n // cols)
    wrong = int(np.sum(np.asarray(labels) != np.asarray(predictions)))
    with figure(dest, title=title or f"{n} test images: predicted / true class ({wrong} wrong, in red)",
                title_size=11, nrows=rows_n, ncols=cols, figsize=(1.45 * cols, 1.75 * rows_n + 0.4),
                squeeze=False) as (fig, axes):
        for k, ax in enumerate(axes.flat):
            ax.set_xticks([])
            ax.set_yticks([])
            if k >= n:
                ax.axis("off")
                continue
            ax.imshow(images[k], cmap="gray_r", vmin=0, vmax=255)
            ok = labels[k] == predictions[k]
            colour = "black" if ok else "#c00000"
            ax.set_title(f"pred: {class_names[predictions[k]]}\ntrue: {class_names[labels[k]]}",
                         fontsize=7.5, color=colour, weight="normal" if ok else "bold")
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(0.5 if ok else 2.5)
    return Path(dest)
