"""What this machine can do, measured in the same run as the figures it explains (``nin-multi bench``).

Two probes: the CPU (its model and the vector/matrix instruction sets that decide which kernels oneDNN
and XLA pick: AMX, AVX-512 BF16, AVX-512F, AVX2, FMA), and the rate at which each installed framework
multiplies large square matrices in fp32 and bf16. The best GEMM rate is the machine's practical limit
for a network whose time is convolutions (lowered to GEMM-like kernels); a training path's GFLOP/s as a
fraction of it says how much of that limit the path uses. Figures from two machines are only comparable
with these beside them: the same code ran ~1.5x apart on an AMX Intel CPU and an AVX-512-BF16 AMD one.

Each GEMM runs in the bench's worker process of its framework (so only that framework is imported, with
its thread settings); this module holds the framework-free parts and one small function per framework.
"""
from __future__ import annotations

import platform
import time

#: instruction sets reported, in order: (name shown, /proc/cpuinfo flags that must all be present)
ISA_FLAGS = (
    ("AMX", ("amx_tile", "amx_bf16")),
    ("AVX-512 BF16", ("avx512_bf16",)),
    ("AVX-512F", ("avx512f",)),
    ("AVX2", ("avx2",)),
    ("FMA", ("fma",)),
)
#: GEMM precisions measured for every bench run (fp64 too when a path runs in fp64)
GEMM_PRECISIONS = ("fp32", "bf16")


def cpu_info(cpuinfo: str | None = None, path: str = "/proc/cpuinfo") -> dict:
    """``{"model": str, "isa": {name: bool or None}, "source": str}`` from /proc/cpuinfo (or the text
    given, for tests). Elsewhere (macOS, Windows) the instruction sets are ``None``: unknown, not absent."""
    if cpuinfo is None:
        try:
            with open(path) as f:
                cpuinfo = f.read()
        except OSError:
            return {"model": platform.processor() or platform.machine() or "unknown",
                    "isa": {name: None for name, _ in ISA_FLAGS}, "source": "unknown (no /proc/cpuinfo)"}
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if sep and key not in fields:  # the first processor's entry speaks for all
            fields[key] = value.strip()
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    model = fields.get("model name") or fields.get("hardware") or fields.get("cpu model") or platform.machine()
    known = bool(flags)
    isa = {name: (all(f in flags for f in needs) if known else None) for name, needs in ISA_FLAGS}
    return {"model": model or "unknown", "isa": isa, "source": path if known else f"{path} (no flags line)"}


def isa_text(isa: dict) -> str:
    """``AMX no, AVX-512 BF16 yes, ...`` for the table's header."""
    return ", ".join(f"{k} {'unknown' if v is None else 'yes' if v else 'no'}" for k, v in isa.items())


# -- training and GEMM FLOPs ----------------------------------------------------------------------------
def forward_macs(spec, image_size: int) -> int:
    """Multiply-adds of one image's forward pass (convolutions and dense layers), from the spec."""
    return sum(info.macs for info in spec.walk(image_size))


def step_flops(spec, image_size: int, batch: int, kind: str = "train") -> float:
    """FLOPs of one step of ``batch`` images. Inference: 2 FLOPs per multiply-add of the forward pass.
    Training: 3x that (the backward pass computes the gradient of each layer's input and of its weights,
    each as many multiply-adds as the forward), the usual estimate; it counts the first convolution's
    input gradient, which no framework computes (0.4% of the chapter's MACs at 224), and nothing for
    ReLU, pooling, the loss or the update."""
    return (3 if kind == "train" else 1) * 2 * forward_macs(spec, image_size) * batch


def gemm_gflops(n: int, seconds: float) -> float:
    return 2 * n ** 3 / seconds / 1e9


def _timed(run, sync, repeats: int) -> list[float]:
    run()
    sync()  # one untimed product: kernels chosen, memory touched, threads woken
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def _gemm_torch(n, precision, repeats):
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}[precision]
    g = torch.Generator(device=dev).manual_seed(0)
    a = torch.rand(n, n, device=dev, dtype=torch.float32, generator=g).to(dtype)
    b = torch.rand(n, n, device=dev, dtype=torch.float32, generator=g).to(dtype)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    return "torch.matmul", dev, _timed(lambda: torch.matmul(a, b), sync, repeats)


def _gemm_tensorflow(n, precision, repeats):
    import tensorflow as tf

    dtype = {"fp32": tf.float32, "bf16": tf.bfloat16, "fp64": tf.float64}[precision]
    a = tf.cast(tf.random.stateless_uniform((n, n), (0, 1)), dtype)
    b = tf.cast(tf.random.stateless_uniform((n, n), (0, 2)), dtype)
    out = {}

    def run():
        out["c"] = tf.linalg.matmul(a, b)

    dev = "gpu:0" if tf.config.list_physical_devices("GPU") else "cpu"
    return "tf.linalg.matmul", dev, _timed(run, lambda: out["c"][0, 0].numpy(), repeats)  # eager GPU ops are async


def _gemm_mxnet(n, precision, repeats):
    import mxnet as mx

    if precision == "bf16":
        raise NotImplementedError("MXNet 1.9.1's dot has no bfloat16 kernel (its bf16 runs through AMP's oneDNN "
                                  "convolutions and FullyConnected only)")
    ctx = mx.gpu(0) if mx.context.num_gpus() > 0 else mx.cpu()
    dtype = {"fp32": "float32", "fp64": "float64"}[precision]
    a = mx.nd.random.uniform(shape=(n, n), ctx=ctx).astype(dtype)
    b = mx.nd.random.uniform(shape=(n, n), ctx=ctx).astype(dtype)
    return "mx.nd.dot", str(ctx), _timed(lambda: mx.nd.dot(a, b), mx.nd.waitall, repeats)


def _gemm_jax(n, precision, repeats):
    import jax
    import jax.numpy as jnp

    if precision == "fp64" and not jax.config.jax_enable_x64:
        raise NotImplementedError("JAX computes float64 only in x64 mode (turned on by an fp64 model)")
    dtype = {"fp32": jnp.float32, "bf16": jnp.bfloat16, "fp64": jnp.float64}[precision]
    a = jax.random.uniform(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.uniform(jax.random.PRNGKey(1), (n, n), jnp.float32).astype(dtype)
    dot = jax.jit(jnp.dot)
    out = {}

    def run():
        out["c"] = dot(a, b)

    d = jax.devices()[0]
    return "jnp.dot (jit)", "cpu" if d.platform == "cpu" else f"{d.platform}:{d.id}", \
        _timed(run, lambda: out["c"].block_until_ready(), repeats)


_GEMM = {"torch": _gemm_torch, "tensorflow": _gemm_tensorflow, "mxnet": _gemm_mxnet, "jax": _gemm_jax}


def measure_gemm(framework: str, precision: str, n: int, repeats: int = 3) -> dict:
    """One framework's n x n x n matrix product at ``precision``: the best of ``repeats`` timed products
    (after one untimed), as GFLOP/s = 2 n^3 / t. A precision the framework cannot multiply in is an
    ``error`` entry, not an exception."""
    entry = {"framework": framework, "precision": precision, "n": n, "op": None, "device": None,
             "seconds": [], "gflops": None, "error": None}
    try:
        entry["op"], entry["device"], entry["seconds"] = _GEMM[framework](n, precision, repeats)
    except Exception as e:  # noqa: BLE001 - a missing kernel is this entry's result, not the run's end
        entry["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
        return entry
    entry["gflops"] = gemm_gflops(n, min(entry["seconds"]))
    return entry


def best_gemm(entries: list[dict]) -> dict:
    """``{precision: {"gflops", "framework", "op"}}``: the fastest framework at each precision measured."""
    best: dict[str, dict] = {}
    for e in entries:
        if e.get("gflops") and e["gflops"] > best.get(e["precision"], {}).get("gflops", 0):
            best[e["precision"]] = {"gflops": e["gflops"], "framework": e["framework"], "op": e["op"], "n": e["n"]}
    return best
