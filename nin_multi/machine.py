"""What this machine can do, measured in the same run as the figures it explains (``nin-multi bench``).

Two probes: the CPU (its model and the vector/matrix instruction sets that decide which kernels oneDNN
and XLA pick: AMX, AVX-512 BF16, AVX-512F, AVX2, FMA), and the rate at which each installed framework
multiplies large square matrices in fp32 and bf16. The best GEMM rate is the machine's practical limit
for a network whose time is convolutions (lowered to GEMM-like kernels); a training path's GFLOP/s as a
fraction of it says how much of that limit the path uses. Figures from two machines are only comparable
with these beside them: the same code ran ~1.5x apart on an AMX Intel CPU and an AVX-512-BF16 AMD one.

Each GEMM runs in the bench's worker process of its framework (so only that framework is imported, with
its thread settings), through the product its ``<backend>_bench`` module sets up; this module holds the
framework-free parts: the CPU, the cores, the FLOP counts and the timing.
"""
from __future__ import annotations

import functools
import os
import platform
import time

import psutil

#: instruction sets reported, in order: (name shown, CPU flags that must all be present)
ISA_FLAGS = (
    ("AMX", ("amx_tile", "amx_bf16")),
    ("AVX-512 BF16", ("avx512_bf16",)),
    ("AVX-512F", ("avx512f",)),
    ("AVX2", ("avx2",)),
    ("FMA", ("fma",)),
)
#: Sets py-cpuinfo 9 reads only from Linux's /proc/cpuinfo (its own CPUID table predates them): elsewhere
#: their absence from the flags means unknown, not absent.
LINUX_ONLY_ISA = frozenset({"AMX", "AVX-512 BF16"})
#: GEMM precisions measured for every bench run (fp64 too when a path runs in fp64)
GEMM_PRECISIONS = ("fp32", "bf16")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict:
    """py-cpuinfo's answer (it runs itself in a subprocess, ~1 s; the CPU does not change in a run)."""
    import cpuinfo

    try:
        return cpuinfo.get_cpu_info()
    except Exception:  # noqa: BLE001 - an unreadable CPU is "unknown", never the end of a bench run
        return {}


def cpu_info(info: dict | None = None, system: str | None = None) -> dict:
    """``{"model": str, "isa": {name: bool or None}, "source": str}`` from py-cpuinfo (or its answer
    given, and the operating system, for tests). ``None``: unknown, not absent."""
    info = _cpuinfo() if info is None else info
    system = system or platform.system()
    flags = set(info.get("flags") or ())
    model = info.get("brand_raw") or info.get("hardware_raw") or platform.processor() or platform.machine()
    isa = {}
    for name, needs in ISA_FLAGS:
        present = all(f in flags for f in needs)
        unknown = not flags or (not present and system != "Linux" and name in LINUX_ONLY_ISA)
        isa[name] = None if unknown else present
    return {"model": model or "unknown", "isa": isa,
            "source": "py-cpuinfo" if flags else "unknown (py-cpuinfo found no CPU flags)"}


def usable_cores() -> int:
    """Cores this process may run on (taskset, cpusets), which ``os.cpu_count()`` ignores."""
    try:
        return len(psutil.Process().cpu_affinity()) or 1
    except (AttributeError, psutil.Error, OSError):  # no affinity API (macOS)
        return psutil.cpu_count() or os.cpu_count() or 1


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


def measure_gemm(framework: str, probe, precision: str, n: int, repeats: int = 3) -> dict:
    """One framework's n x n x n matrix product at ``precision``: the best of ``repeats`` timed products
    (after one untimed), as GFLOP/s = 2 n^3 / t. ``probe(n, precision)`` is its bench module's ``gemm``:
    ``(op, device, run, sync)``. A precision the framework cannot multiply in is an ``error`` entry,
    not an exception."""
    entry = {"framework": framework, "precision": precision, "n": n, "op": None, "device": None,
             "seconds": [], "gflops": None, "error": None}
    try:
        entry["op"], entry["device"], run, sync = probe(n, precision)
        entry["seconds"] = _timed(run, sync, repeats)
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
