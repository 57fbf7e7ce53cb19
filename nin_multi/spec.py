"""The NiN architecture as data.

Every framework rendering (``backends/``) walks ``NiNSpec.layers`` and translates each entry; nothing
about the network's structure is written anywhere else. Because the spec is plain frozen data it can
also be serialised (``to_dict``/``from_dict``) into a weights file, so a file says which network it
belongs to, and it can compute shapes, parameter counts and multiply-adds without any framework.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Iterator, Sequence, Union

from .errors import SpecError, ImageTooSmallError


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    h, w = v
    return (int(h), int(w))


def image_hw(image_size) -> tuple[int, int]:
    """(height, width) of an image size given as one int (a square, as the chapter's 224) or a pair: how
    ``walk`` and every backend's ``layer_shapes`` read their ``image_size``."""
    return _pair(image_size)


@dataclass(frozen=True)
class Conv:
    """One convolution followed by ReLU. ``padding`` is explicit and symmetric, never "same"."""

    name: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0

    def out_hw(self, hw):
        return tuple((x + 2 * self.padding - self.kernel) // self.stride + 1 for x in hw)

    @property
    def params(self) -> int:
        return self.out_channels * self.in_channels * self.kernel * self.kernel + self.out_channels

    def macs(self, out_hw) -> int:
        """Multiply-adds of one image's forward pass, given this conv's output size: every output value
        of every channel sums ``in_channels x kernel x kernel`` products (the bias and ReLU are not counted)."""
        oh, ow = out_hw
        return oh * ow * self.out_channels * self.in_channels * self.kernel * self.kernel

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        """Canonical kernel layout: OIHW (PyTorch's and MXNet's; TensorFlow transposes at the edge)."""
        return (self.out_channels, self.in_channels, self.kernel, self.kernel)


@dataclass(frozen=True)
class NiNBlock:
    """One k×k convolution then ``len(convs) - 1`` "1×1" convolutions, each followed by ReLU."""

    name: str
    convs: tuple[Conv, ...]

    @property
    def out_channels(self) -> int:
        return self.convs[-1].out_channels


@dataclass(frozen=True)
class MaxPool:
    """Max-pooling without padding; output size rounds down (PyTorch's and Gluon's "valid")."""

    name: str
    kernel: int = 3
    stride: int = 2


@dataclass(frozen=True)
class Dropout:
    name: str
    rate: float = 0.5


@dataclass(frozen=True)
class ChannelDropout:
    """Dropout of whole feature maps, one draw per image and channel shared over H and W (PyTorch's
    ``Dropout2d``, Keras's ``SpatialDropout2D``): the standalone NinNet's. Its own type rather than a flag
    of ``Dropout``, so a backend that cannot render it fails loudly instead of dropping single values."""

    name: str
    rate: float = 0.5


@dataclass(frozen=True)
class AvgPool:
    """Average pooling over a fixed window, no padding, rounding down (PyTorch's ``AvgPool2d(k)``): the
    standalone NinNet's ``AvgPool2d(5)`` where the chapter pools globally. It is global only where its
    input map is k x k (224 in the chapter's net); on a larger map it averages the first windows only."""

    name: str
    kernel: int = 5
    stride: int = 5


@dataclass(frozen=True)
class GlobalAvgPool:
    """Keeps the (N, C, 1, 1) step so that each spec layer has one output to compare across frameworks."""

    name: str


@dataclass(frozen=True)
class Flatten:
    name: str


@dataclass(frozen=True)
class Dense:
    """Fully connected layer, only used by the fully connected head variant (the chapter has none)."""

    name: str
    in_features: int
    out_features: int
    relu: bool = True

    @property
    def params(self) -> int:
        return self.in_features * self.out_features + self.out_features


Layer = Union[NiNBlock, MaxPool, Dropout, ChannelDropout, AvgPool, GlobalAvgPool, Flatten, Dense]
_LAYER_TYPES = {cls.__name__: cls for cls in (NiNBlock, MaxPool, Dropout, ChannelDropout, AvgPool, GlobalAvgPool,
                                              Flatten, Dense)}


@dataclass(frozen=True)
class LayerInfo:
    """What the spec infers for one top-level layer at a given input size."""

    name: str
    kind: str
    nchw: tuple[int, ...]
    params: int
    macs: int  # multiply-adds of the forward pass, the usual "FLOPs / 2"
    note: str = ""  # e.g. a fixed average pool that is not global at this size

    @property
    def nhwc(self) -> tuple[int, ...]:
        return to_nhwc(self.nchw)


def to_nhwc(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(shape)
    if len(shape) != 4:
        return shape
    n, c, h, w = shape
    return (n, h, w, c)


@dataclass(frozen=True)
class NiNSpec:
    in_channels: int
    num_classes: int
    layers: tuple[Layer, ...]
    variant: str = "chapter"

    # -- structure --------------------------------------------------------------------------------
    def convs(self) -> Iterator[Conv]:
        for layer in self.layers:
            if isinstance(layer, NiNBlock):
                yield from layer.convs

    def param_layers(self) -> Iterator[Union[Conv, Dense]]:
        """Every layer that owns weights, in forward order; their names key the canonical weights."""
        for layer in self.layers:
            if isinstance(layer, NiNBlock):
                yield from layer.convs
            elif isinstance(layer, Dense):
                yield layer

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical weight names and shapes: conv kernels OIHW, dense kernels (in, out), biases (out,)."""
        out = {}
        for p in self.param_layers():
            if isinstance(p, Conv):
                out[f"{p.name}.weight"] = p.weight_shape
            else:
                out[f"{p.name}.weight"] = (p.in_features, p.out_features)
            out[f"{p.name}.bias"] = (p.out_features if isinstance(p, Dense) else p.out_channels,)
        return out

    @property
    def num_params(self) -> int:
        return sum(p.params for p in self.param_layers())

    # -- inference ----------------------------------------------------------------------------------
    def walk(self, image_size=224, batch: int = 1, complete: bool = True) -> list[LayerInfo]:
        """Shape, parameters and multiply-adds of each top-level layer, as the chapter prints them.

        Raises ImageTooSmallError naming the first layer whose output would have no pixels left, and
        (``complete``) SpecError where the network would not end in one score per class.
        """
        try:
            infos = self._walk(image_size, batch)
        except _NoPixels as e:
            hh, ww = _pair(image_size)
            raise ImageTooSmallError(
                f"a {hh}x{ww} image is too small for this network: the output of layer '{e.layer}' would be "
                f"{e.hw[0]}x{e.hw[1]}. Use a larger --resize (this network needs at least "
                f"{self.min_image_size()})") from None
        if complete and infos and infos[-1].nchw != (batch, self.num_classes):
            pool = next((i for i in infos if i.kind == "AvgPool"), None)
            why = f" ({pool.name} {pool.note})" if pool and pool.note else ""
            raise SpecError(f"at {_pair(image_size)[0]}x{_pair(image_size)[1]} this network would output "
                            f"{infos[-1].nchw[1:]} per image, not {self.num_classes} class scores{why}; "
                            f"it fits --resize {self._fitting_sizes()}")
        return infos

    def _walk(self, image_size, batch: int) -> list[LayerInfo]:
        h, w = _pair(image_size)
        if h <= 0 or w <= 0:
            raise ImageTooSmallError(f"image size must be positive, got {h}x{w}")
        c = self.in_channels
        flat = None  # number of features once flattened
        infos = []
        for layer in self.layers:
            params = macs = 0
            note = ""
            if isinstance(layer, NiNBlock):
                for conv in layer.convs:
                    if conv.in_channels != c:
                        raise SpecError(f"{conv.name} expects {conv.in_channels} input channels, gets {c}")
                    h, w = conv.out_hw((h, w))
                    _check_pixels(layer.name, h, w)
                    c = conv.out_channels
                    params += conv.params
                    macs += conv.macs((h, w))
            elif isinstance(layer, MaxPool):
                h, w = ((x - layer.kernel) // layer.stride + 1 for x in (h, w))
                _check_pixels(layer.name, h, w)
            elif isinstance(layer, AvgPool):
                ih, iw = h, w
                h, w = ((x - layer.kernel) // layer.stride + 1 for x in (h, w))
                _check_pixels(layer.name, h, w)
                if (ih, iw) != (layer.kernel, layer.kernel):
                    note = (f"averages {layer.kernel}x{layer.kernel} windows of a {ih}x{iw} map into {h}x{w}: "
                            f"not global")
            elif isinstance(layer, GlobalAvgPool):
                h = w = 1
            elif isinstance(layer, Flatten):
                flat = c * h * w
            elif isinstance(layer, Dense):
                if flat != layer.in_features:
                    raise SpecError(
                        f"{layer.name} expects {layer.in_features} input features, gets {flat}: a fully "
                        f"connected head fixes the input size (it was built for another image size)"
                    )
                flat = layer.out_features
                params, macs = layer.params, layer.in_features * layer.out_features
            shape = (batch, flat) if flat is not None else (batch, c, h, w)
            infos.append(LayerInfo(layer.name, type(layer).__name__, shape, params, macs * batch, note))
        return infos

    def _fits(self, size: int) -> bool:
        try:
            infos = self._walk(size, 1)
        except (_NoPixels, SpecError):
            return False
        return infos[-1].nchw == (1, self.num_classes)

    def min_image_size(self) -> int:
        """Smallest square input for which every layer keeps a pixel and the network ends in class scores."""
        for size in range(1, 4096):
            if self._fits(size):
                return size
        raise SpecError("no input size up to 4096 fits this network")

    def _fitting_sizes(self, limit: int = 1024) -> str:
        """The square sizes that fit, as ranges ("195-258, 291-354"); a fixed pool fits bands of sizes."""
        ok = [s for s in range(1, limit + 1) if self._fits(s)]
        ranges, start = [], None
        for i, s in enumerate(ok):
            start = s if start is None else start
            if i + 1 == len(ok) or ok[i + 1] != s + 1:
                ranges.append(f"{start}-{s}" if s > start else str(s))
                start = None
        return ", ".join(ranges[:4]) + (", ..." if len(ranges) > 4 else "") if ranges else "none up to 1024"

    # -- serialisation ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        def layer_dict(layer):
            d = {"type": type(layer).__name__}
            for f in dataclasses.fields(layer):
                v = getattr(layer, f.name)
                d[f.name] = [dataclasses.asdict(c) for c in v] if f.name == "convs" else v
            return d

        return {
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "variant": self.variant,
            "layers": [layer_dict(layer) for layer in self.layers],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "NiNSpec":
        layers = []
        for ld in d["layers"]:
            ld = dict(ld)
            kind = _LAYER_TYPES[ld.pop("type")]
            if kind is NiNBlock:
                ld["convs"] = tuple(Conv(**c) for c in ld["convs"])
            layers.append(kind(**ld))
        return cls(d["in_channels"], d["num_classes"], tuple(layers), d.get("variant", "chapter"))


class _NoPixels(Exception):
    def __init__(self, layer: str, hw):
        self.layer, self.hw = layer, hw


def _check_pixels(name: str, h: int, w: int) -> None:
    if h <= 0 or w <= 0:
        raise _NoPixels(name, (max(h, 0), max(w, 0)))


# -- building specs -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockDef:
    """One row of the architecture table: a NiN block's first conv (the 1×1 convs follow it)."""

    out_channels: Union[int, str]  # an int, or "classes" for the last block
    kernel: int
    stride: int
    padding: int


#: The chapter's table: block (96, k11, s4, p0) → pool → (256, k5, s1, p2) → pool → (384, k3, s1, p1)
#: → pool → dropout → (classes, k3, s1, p1) → global average pool → flatten.
CHAPTER_BLOCKS: tuple[BlockDef, ...] = (
    BlockDef(96, 11, 4, 0),
    BlockDef(256, 5, 1, 2),
    BlockDef(384, 3, 1, 1),
    BlockDef("classes", 3, 1, 1),
)


def build_spec(
    blocks: Sequence[BlockDef] = CHAPTER_BLOCKS,
    in_channels: int = 1,
    num_classes: int = 10,
    n_1x1: Union[int, Sequence[int]] = 2,
    k_1x1: int = 1,
    dropout: float = 0.5,
    head: str = "gap",
    fc_input_size: int = 224,
    fc_hidden: Sequence[int] = (),
    variant: str = "chapter",
    channel_dropout: bool = False,
    avg_pool: int = 0,
) -> NiNSpec:
    """Turn a block table into a spec: a max-pool between blocks, dropout before the last block.

    ``n_1x1`` and ``k_1x1`` are the chapter's exercise knobs (how many "1×1" convs follow the k×k one,
    and their kernel size, padded so they keep the spatial size); ``n_1x1`` is one count for every
    block or one per row of ``blocks``. ``head="fc"`` replaces the last
    block, global pooling and flatten with flatten → dense layers → classes, as VGG/AlexNet do; it
    needs the input size it will be used at (``fc_input_size``). ``channel_dropout`` drops whole
    feature maps; ``avg_pool`` k > 0 ends in a fixed k x k average pool instead of a global one (both the
    standalone NinNet's).
    """
    _check_positive_int("in_channels", in_channels)
    _check_positive_int("num_classes", num_classes)
    counts = [n_1x1] * len(blocks) if isinstance(n_1x1, int) else list(n_1x1)
    if len(counts) != len(blocks):
        raise SpecError(f"n_1x1 has {len(counts)} counts for {len(blocks)} blocks")
    for n in counts:
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= 8:
            raise SpecError(f"n_1x1 must be between 0 and 8, got {n!r}")
    if k_1x1 % 2 != 1:
        raise SpecError(f"k_1x1 must be odd so its padding keeps the shape, got {k_1x1}")
    if head not in ("gap", "fc"):
        raise SpecError(f"head must be 'gap' (the chapter) or 'fc', got {head!r}")
    layers: list[Layer] = []
    c = in_channels
    conv_blocks = [(b, n) for b, n in zip(blocks, counts) if head == "gap" or b.out_channels != "classes"]
    for i, (b, n_block) in enumerate(conv_blocks, start=1):
        out = num_classes if b.out_channels == "classes" else b.out_channels
        _check_positive_int(f"block {i} channels", out)
        if i == len(conv_blocks) and head == "gap":
            layers.append((ChannelDropout if channel_dropout else Dropout)("dropout", dropout))
        name = f"nin{i}"
        convs = [Conv(f"{name}.conv0", c, out, b.kernel, b.stride, b.padding)]
        convs += [Conv(f"{name}.conv{j}", out, out, k_1x1, 1, k_1x1 // 2) for j in range(1, n_block + 1)]
        layers.append(NiNBlock(name, tuple(convs)))
        c = out
        if i < len(conv_blocks):
            layers.append(MaxPool(f"pool{i}", 3, 2))
    if head == "gap":
        layers += [AvgPool("avgpool", avg_pool, avg_pool) if avg_pool else GlobalAvgPool("gap"), Flatten("flatten")]
    else:
        layers += [MaxPool(f"pool{len(conv_blocks)}", 3, 2), Flatten("flatten")]
        partial = NiNSpec(in_channels, num_classes, tuple(layers), variant)
        feats = partial.walk(fc_input_size, complete=False)[-1].nchw[1]
        for j, units in enumerate(list(fc_hidden) + [num_classes], start=1):
            last = j == len(fc_hidden) + 1
            if not last:
                layers.append(Dropout(f"fc_dropout{j}", dropout))
            layers.append(Dense(f"fc{j}", feats, units, relu=not last))
            feats = units
    return NiNSpec(in_channels, num_classes, tuple(layers), variant)


def _check_positive_int(what, v):
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise SpecError(f"{what} must be a positive integer, got {v!r}")


def chapter_spec(in_channels: int = 1, num_classes: int = 10) -> NiNSpec:
    """The network of the chapter (d2l.ai, 8.3): 1,992,166 parameters at 1 input channel, 10 classes."""
    return build_spec(CHAPTER_BLOCKS, in_channels, num_classes)


MINI_BLOCKS: tuple[BlockDef, ...] = (
    BlockDef(32, 5, 1, 2),
    BlockDef(64, 3, 1, 1),
    BlockDef(128, 3, 1, 1),
    BlockDef("classes", 3, 1, 1),
)

#: A VGG-style table for a deeper NiN family: VGG's widths (64-128-256-512-512), 3x3 convs everywhere
#: (no 11x11/4 stem), five max-pools as in VGG, then the classes block and global average pooling
#: instead of VGG's three dense layers. Needs at least a 63x63 input.
VGG_STYLE_BLOCKS: tuple[BlockDef, ...] = (
    BlockDef(64, 3, 1, 1),
    BlockDef(128, 3, 1, 1),
    BlockDef(256, 3, 1, 1),
    BlockDef(512, 3, 1, 1),
    BlockDef(512, 3, 1, 1),
    BlockDef("classes", 3, 1, 1),
)

#: Named variants for the chapter's exercises; each is only a set of ``build_spec`` arguments, so every
#: backend renders every variant without code of its own.
VARIANTS: dict[str, dict] = {
    "chapter": {},
    "no-1x1": {"n_1x1": 0},
    "one-1x1": {"n_1x1": 1},
    "three-1x1": {"n_1x1": 3},
    "3x3-inner": {"k_1x1": 3},
    "fc-head": {"head": "fc", "fc_hidden": (4096,)},
    # Not the chapter's: a narrow NiN for unresized 28x28 images, ~100x cheaper than the chapter's net at
    # 96x96; it trains in seconds on a CPU, which makes it the tests' quick signal of learning.
    "mini": {"blocks": MINI_BLOCKS},
    # NiN by analogy with VGG-11/16/19: each VGG stage of d 3x3 convs becomes a NiN block of one 3x3 conv
    # and d - 1 "1x1" convs (stage depths 1,1,2,2,2 / 2,2,3,3,3 / 2,2,4,4,4), and VGG's three dense
    # layers become the classes block of one 3x3 and two 1x1 convs: 11, 16 and 19 weight layers.
    "nin-11": {"blocks": VGG_STYLE_BLOCKS, "n_1x1": (0, 0, 1, 1, 1, 2)},
    "nin-16": {"blocks": VGG_STYLE_BLOCKS, "n_1x1": (1, 1, 2, 2, 2, 2)},
    "nin-19": {"blocks": VGG_STYLE_BLOCKS, "n_1x1": (1, 1, 3, 3, 3, 2)},
    # A standalone PyTorch NinNet many start from: the chapter's blocks with Dropout2d (whole feature maps)
    # and AvgPool2d(5) instead of global pooling (global only at 224). Its 3 input channels and float64
    # come with its recipe, standalone-ninnet (nin_multi/recipes.py).
    "ninnet": {"channel_dropout": True, "avg_pool": 5},
    # The same six blocks with 1, 2 or 3 "1x1" convs in every block (12, 18, 24 weight layers).
    "nin-vgg-12": {"blocks": VGG_STYLE_BLOCKS, "n_1x1": 1},
    "nin-vgg-18": {"blocks": VGG_STYLE_BLOCKS, "n_1x1": 2},
    "nin-vgg-24": {"blocks": VGG_STYLE_BLOCKS, "n_1x1": 3},
}


def make_spec(variant: str = "chapter", in_channels: int = 1, num_classes: int = 10,
              dropout: float | None = None, image_size: int = 224) -> NiNSpec:
    """The spec of a named variant. ``image_size`` only matters for the fully connected head."""
    if variant not in VARIANTS:
        raise SpecError(f"unknown variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
    kwargs = dict(VARIANTS[variant], in_channels=in_channels, num_classes=num_classes, variant=variant)
    if dropout is not None:
        kwargs["dropout"] = dropout
    if kwargs.get("head") == "fc":
        kwargs["fc_input_size"] = image_size
    return build_spec(kwargs.pop("blocks", CHAPTER_BLOCKS), **kwargs)
