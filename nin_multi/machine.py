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
    """The CPU's model and flags: on Linux straight from /proc/cpuinfo (what py-cpuinfo reads there too,
    without the ~1 s subprocess it starts, so ``train`` can name the CPU class at no cost); elsewhere
    py-cpuinfo's answer. The CPU does not change in a run."""
    info = _proc_cpuinfo()
    if info:
        return info
    import cpuinfo

    try:
        return cpuinfo.get_cpu_info()
    except Exception:  # noqa: BLE001 - an unreadable CPU is "unknown", never the end of a bench run
        return {}


def _proc_cpuinfo(path: str = "/proc/cpuinfo") -> dict:
    """py-cpuinfo's two fields that ``cpu_info`` reads, from Linux's first processor entry."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 20)
    except OSError:
        return {}
    fields = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = (fields.get("flags") or fields.get("Features") or "").split()
    if not flags:
        return {}
    return {"brand_raw": fields.get("model name", ""), "flags": flags, "source": "/proc/cpuinfo"}


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
            "source": info.get("source", "py-cpuinfo") if flags else "unknown (no CPU flags found)"}


#: The CPU classes that decide how fast bf16 trains, from least to most capable: without AVX-512 BF16 or
#: AMX there is no bf16 arithmetic, and oneDNN and XLA convert to fp32 and back around fp32 kernels (a
#: chapter-network step took 5-10x an fp32 one on an AVX2 CPU). "other": no AVX2 (an old x86, or ARM).
CPU_CLASSES = ("other", "AVX2", "AVX-512", "AVX-512 BF16", "AMX")
BF16_HARDWARE = ("AVX-512 BF16", "AMX")
#: The variables that cap the instruction sets oneDNN (PyTorch, TensorFlow, MXNet) may use, as it reads
#: them (DNNL_ is the older name, which MXNet 1.9's oneDNN 2.x reads); XLA's cap is a flag in XLA_FLAGS.
ISA_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
XLA_ISA_FLAG = "--xla_cpu_max_isa"
#: oneDNN's and XLA's cap values, to the class they leave at most.
_CAP_CLASSES = {
    "SSE41": "other", "SSE4_2": "other", "AVX": "other", "AVX2": "AVX2", "AVX2_VNNI": "AVX2",
    "AVX2_VNNI_2": "AVX2", "AVX512": "AVX-512", "AVX512_CORE": "AVX-512", "AVX512_CORE_VNNI": "AVX-512",
    "AVX512_VNNI": "AVX-512", "AVX512_CORE_BF16": "AVX-512 BF16", "AVX512_BF16": "AVX-512 BF16",
    "AVX512_CORE_FP16": "AVX-512 BF16", "AVX10_1_512": "AVX-512 BF16", "AVX512_CORE_AMX": "AMX",
    "AVX512_CORE_AMX_FP16": "AMX", "AMX": "AMX", "AVX10_1_512_AMX": "AMX", "AVX10_1_512_AMX_FP16": "AMX",
    "ALL": "AMX", "DEFAULT": "AMX"}


def isa_cap(env=None) -> tuple[str, str] | None:
    """``(variable, value)`` of the lowest instruction-set cap in force for the kernels of this process, or
    None: oneDNN's variables and XLA's ``--xla_cpu_max_isa``. An unknown value caps nothing here (oneDNN
    ignores it too)."""
    env = os.environ if env is None else env
    found = [(name, env[name].strip().upper()) for name in ISA_CAP_VARIABLES if env.get(name, "").strip()]
    for flag in env.get("XLA_FLAGS", "").split():
        if flag.startswith(XLA_ISA_FLAG + "="):
            found.append(("XLA_FLAGS", flag.split("=", 1)[1].strip().upper()))
    known = [(name, value) for name, value in found if value in _CAP_CLASSES]
    return min(known, key=lambda nv: CPU_CLASSES.index(_CAP_CLASSES[nv[1]])) if known else None


def cpu_class(isa: dict | None = None, env=None) -> str:
    """The CPU class the kernels run at: the best of ``CPU_CLASSES`` the CPU has (``isa``: ``cpu_info``'s),
    lowered to the cap of ``isa_cap`` where one is set, since a capped oneDNN picks kernels as on that
    smaller CPU. An instruction set reported unknown counts as absent."""
    isa = cpu_info()["isa"] if isa is None else isa
    has = "AMX" if isa.get("AMX") else "AVX-512 BF16" if isa.get("AVX-512 BF16") else \
        "AVX-512" if isa.get("AVX-512F") else "AVX2" if isa.get("AVX2") else "other"
    cap = isa_cap(env)
    if cap is not None and CPU_CLASSES.index(_CAP_CLASSES[cap[1]]) < CPU_CLASSES.index(has):
        return _CAP_CLASSES[cap[1]]
    return has


def describe(device: str = "cpu", isa: dict | None = None, env=None) -> str:
    """What every speed figure is tied to: ``CPU class AVX2 (AMD EPYC 7B13, 2 cores)``, the cap when one
    is set, and the GPU where the framework computes on one."""
    info = cpu_info() if isa is None else {"model": None, "isa": isa}
    cls = cpu_class(info["isa"], env)
    cap = isa_cap(env)
    model = f"{info['model']}, " if info.get("model") else ""
    text = f"CPU class {cls} ({model}{usable_cores()} cores" + (f"; capped by {cap[0]}={cap[1]}" if cap else "") + ")"
    return text if device == "cpu" else f"{text}, GPU {device}"


def usable_cores() -> int:
    """Cores this process may run on (taskset, cpusets), which ``os.cpu_count()`` ignores."""
    try:
        return len(psutil.Process().cpu_affinity()) or 1
    except (AttributeError, psutil.Error, OSError):  # no affinity API (macOS)
        return psutil.cpu_count() or os.cpu_count() or 1


def default_threads(env=None) -> int:
    """The threads a framework computes with when none is asked for: ``$OMP_NUM_THREADS`` where set (the
    OpenMP convention by which a launcher shares one machine's cores among its workers: torchrun's,
    ``train --workers``'s), else the usable cores."""
    raw = (os.environ if env is None else env).get("OMP_NUM_THREADS", "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else usable_cores()


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
