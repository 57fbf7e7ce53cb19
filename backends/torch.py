"""PyTorch rendering of the spec: ``nn.Sequential`` of named blocks, NCHW, the book's ``init_cnn``.

Module names follow the spec's layer names, so ``state_dict()`` keys are the canonical weight names
and only dense kernels need a transpose at the edge (PyTorch stores them (out, in)).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from nin_multi.backends.common import kernel_from_canonical, kernel_to_canonical
from nin_multi.config import SHARED_DRAW_INITS, check_model_dtype
from nin_multi.machine import default_threads
from nin_multi.optim import SGDSettings, resolve
from nin_multi.spec import (AvgPool, ChannelDropout, Conv, Dense, Dropout, Flatten, GlobalAvgPool, MaxPool, NiNBlock,
                            NiNSpec, image_hw)
from nin_multi.weights import initial_weights

NAME = "torch"
LAYOUT = "NCHW"
TRAINS = True
PRECISIONS = ("fp32", "bf16", "fp16", "fp64")
DATA_PARALLEL = "torchrun"  # torch_dist.py: DistributedDataParallel
NATIVE_SUFFIXES = (".pt", ".pth")  # a state_dict
PRECISION_NEEDS = {}  # every precision runs on every CPU (bf16 without AVX-512 BF16/AMX is emulated, slowly)


def _keep_freed_memory() -> bool:
    """Make glibc's malloc serve every allocation from its heap and keep what is freed.

    PyTorch's CPU allocator is plain ``malloc``, and glibc hands each block over 32 MiB to ``mmap`` and
    returns it to the kernel on ``free``: a training step at 224x224 allocated 1.4 GiB of activations and
    gradients that way and page-faulted all of it again on every step (353,000 faults per step measured),
    ~17% of the step. MXNet's storage pool and TensorFlow's BFC allocator keep their memory (1,568 faults
    per MXNet step); PyTorch's tuning guide suggests jemalloc or tcmalloc through LD_PRELOAD for the
    same reason. This is that remedy without a preload: no ``mmap`` (M_MMAP_MAX 0) and no trimming of the
    heap's top below 1 GiB (M_TRIM_THRESHOLD), so a step reuses the previous step's pages. The process
    keeps its peak memory, as the other frameworks do. Only where the C library is glibc."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-4, 0)) and bool(libc.mallopt(-1, 2**30))  # M_MMAP_MAX, M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


def configure(threads=None, seed=0):
    _keep_freed_memory()
    # Set explicitly: another framework in the process (MXNet) may have lowered the OpenMP thread count.
    # Never more threads than usable cores by default: oneDNN's bf16 (AMX) weight-gradient kernels
    # synchronise their threads by spinning, so two threads sharing one core made a bf16 step ~18x
    # slower (fp32 barely changes); the same happens when other processes keep the cores busy, where
    # --threads 1 is the remedy.
    torch.set_num_threads(threads or default_threads())
    torch.manual_seed(seed)


def device() -> str:
    # torchrun's LOCAL_RANK: one GPU per worker process on a multi-GPU host
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"


def _conv_relu(conv: Conv):
    return [(conv.name.split(".")[-1], nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel,
                                                 conv.stride, conv.padding)),
            (conv.name.split(".")[-1].replace("conv", "relu"), nn.ReLU())]


def _render(layer) -> nn.Module:
    if isinstance(layer, NiNBlock):
        return nn.Sequential(OrderedDict(m for conv in layer.convs for m in _conv_relu(conv)))
    if isinstance(layer, MaxPool):
        return nn.MaxPool2d(layer.kernel, layer.stride)
    if isinstance(layer, Dropout):
        return nn.Dropout(layer.rate)
    if isinstance(layer, ChannelDropout):
        return nn.Dropout2d(layer.rate)
    if isinstance(layer, AvgPool):
        return nn.AvgPool2d(layer.kernel, layer.stride)
    if isinstance(layer, GlobalAvgPool):
        return nn.AdaptiveAvgPool2d((1, 1))
    if isinstance(layer, Flatten):
        return nn.Flatten()
    if isinstance(layer, Dense):
        lin = nn.Linear(layer.in_features, layer.out_features)
        return nn.Sequential(lin, nn.ReLU()) if layer.relu else lin
    raise TypeError(f"no PyTorch rendering for {type(layer).__name__}")


def _linear(module: nn.Module) -> nn.Linear:
    return module[0] if isinstance(module, nn.Sequential) else module


def build_model(spec: NiNSpec, init: str = "xavier", seed: int = 0, dtype: str = "float32") -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(OrderedDict((layer.name, _render(layer)) for layer in spec.layers))
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if init == "xavier":
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    model = model.to(device(), dtype=getattr(torch, dtype))  # float64: drawn in float32, then widened
    if init in SHARED_DRAW_INITS:
        set_weights(model, spec, initial_weights(spec, init, seed, dtype))
    return model


def _dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters(), torch.empty(0)).dtype  # a model without weights computes in float32


def layer_shapes(model: nn.Module, spec: NiNSpec, image_size=224, batch: int = 1):
    h, w = image_hw(image_size)
    x = torch.zeros(batch, spec.in_channels, h, w, device=device(), dtype=_dtype(model))
    out = []
    model.eval()
    with torch.no_grad():
        for name, layer in model.named_children():
            x = layer(x)
            out.append((name, tuple(x.shape)))
    return out


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _param_modules(model: nn.Module, spec: NiNSpec):
    for p in spec.param_layers():
        if isinstance(p, Dense):
            yield p, _linear(model.get_submodule(p.name))
        else:
            yield p, model.get_submodule(p.name)


def get_weights(model: nn.Module, spec: NiNSpec) -> dict:
    out = {}
    for p, m in _param_modules(model, spec):
        out[f"{p.name}.weight"] = kernel_to_canonical(p, m.weight.detach().cpu().numpy(), LAYOUT)
        out[f"{p.name}.bias"] = m.bias.detach().cpu().numpy().copy()
    return out


def set_weights(model: nn.Module, spec: NiNSpec, weights: dict) -> None:
    with torch.no_grad():
        for p, m in _param_modules(model, spec):
            w = weights[f"{p.name}.weight"]
            m.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel_from_canonical(p, w, LAYOUT))))
            m.bias.copy_(torch.from_numpy(np.asarray(weights[f"{p.name}.bias"])))


def forward(model: nn.Module, x: np.ndarray, training: bool = False) -> np.ndarray:
    model.train(training)
    dtype = _dtype(model)
    with torch.set_grad_enabled(training):
        return model(torch.from_numpy(x).to(device(), dtype=dtype)).detach().to(dtype).cpu().numpy()


def save_native(model: nn.Module, path) -> None:
    torch.save(model.state_dict(), path)


class Trainer:
    """SGD on cross-entropy: ``torch.optim.SGD`` (momentum, Nesterov, weight decay) and
    ``CrossEntropyLoss(label_smoothing)`` as ``optim`` sets them (default: plain SGD at ``lr``), the
    driver's rate set in the optimizer's parameter group before each update; PyTorch's formulas are
    the meaning every backend computes (nin_multi/optim.py). Channels-last memory layout by default: the
    same numbers (fp32 rounding aside), measured 1.5x faster on CPU convolutions; bf16/fp16 via autocast,
    loss kept in fp32; fp64 all in float64 (``torch.optim.SGD`` applies the learning rate as a Python
    float, a double). ``CHANNELS_LAST = False`` in a subclass keeps PyTorch's default layout (bench's
    plain-PyTorch peer). ``net`` is what a step calls: the model, or the data-parallel engine's wrapper
    around it (torch_dist's ``DistributedDataParallel``), so the engine steps this same optimizer."""

    CHANNELS_LAST = True

    def __init__(self, model: nn.Module, lr: float, precision: str = "fp32", optim: SGDSettings | None = None):
        self.dtype = _dtype(model)
        check_model_dtype(precision, str(self.dtype).removeprefix("torch."))
        self.model = self.net = model
        self.dev = torch.device(device())
        self.memory_format = torch.channels_last if self.CHANNELS_LAST else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.optim = o = resolve(lr, optim)
        self.opt = torch.optim.SGD(model.parameters(), lr=o.lr_at(0), momentum=o.momentum, nesterov=o.nesterov,
                                   weight_decay=o.weight_decay)
        self.loss = nn.CrossEntropyLoss(label_smoothing=o.label_smoothing, reduction="sum")
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.autocast = (lambda: torch.autocast(self.dev.type, dtype=dtype)) if dtype else nullcontext
        self.scaler = torch.amp.GradScaler(self.dev.type, enabled=precision == "fp16")

    def _inputs(self, x, y):
        x = torch.from_numpy(x).to(self.dev, dtype=self.dtype).contiguous(memory_format=self.memory_format)
        return x, torch.from_numpy(y).to(self.dev)

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float, total: int | None = None) -> tuple[float, int]:
        x, y = self._inputs(x, y)
        self.net.train()
        with self.autocast():
            logits = self.net(x)
        loss_sum = self.loss(logits.to(self.dtype), y)  # fp32 (fp64) even when autocast computed in bf16
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss_sum / (total or len(y))).backward()
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.scaler.step(self.opt)
        self.scaler.update()
        return loss_sum.item(), int((logits.argmax(1) == y).sum())

    @torch.no_grad()
    def eval_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        x, y = self._inputs(x, y)
        self.model.eval()
        with self.autocast():
            logits = self.model(x).to(self.dtype)
        return nn.functional.cross_entropy(logits, y).item() * len(y), int((logits.argmax(1) == y).sum())

    def extra_state(self) -> dict:
        """What a checkpoint needs beyond the weights: the dropout RNG and the momentum buffers, in
        parameter order (the step count is the driver's)."""
        state = {"torch_rng": torch.get_rng_state().numpy()}
        for i, p in enumerate(self.model.parameters()):
            buf = self.opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                state[f"torch_momentum.{i}"] = buf.detach().cpu().numpy()
        return state

    def load_extra_state(self, state: dict) -> None:
        torch.set_rng_state(torch.from_numpy(np.asarray(state["torch_rng"], dtype=np.uint8)))
        for i, p in enumerate(self.model.parameters()):
            if f"torch_momentum.{i}" in state:
                buf = torch.empty_like(p)  # the parameter's memory format (channels-last)
                saved = torch.from_numpy(np.array(state[f"torch_momentum.{i}"]))
                self.opt.state[p]["momentum_buffer"] = buf.copy_(saved)
