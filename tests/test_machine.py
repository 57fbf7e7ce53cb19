"""The machine probe: the CPU and its instruction sets from py-cpuinfo, the usable cores, the training FLOPs
formula, and each framework's GEMM rate (positive, from its own timings; never asserted against a speed)."""
import os
import platform

import pytest

from nin_multi import backends, machine
from nin_multi.spec import make_spec

from conftest import TRAINABLE, load

# py-cpuinfo's answers (the fields cpu_info reads), as it gives them on each machine
INTEL_AMX = {"brand_raw": "Intel(R) Xeon(R) Platinum 8480+", "arch": "X86_64",
             "flags": ["amx_bf16", "amx_int8", "amx_tile", "avx", "avx2", "avx512_bf16", "avx512bw", "avx512f", "fma",
                       "fpu", "sse", "sse2", "vme"]}
AMD_EPYC = {"brand_raw": "AMD EPYC 9R14 96-Core Processor", "arch": "X86_64",
            "flags": ["avx", "avx2", "avx512_bf16", "avx512_vnni", "avx512f", "fma", "fpu", "sse2"]}
ARM = {"hardware_raw": "", "arch": "ARM_8", "brand_raw": "",
       "flags": ["aes", "asimd", "asimdhp", "atomics", "crc32", "evtstrm", "fp", "fphp", "pmull", "sha1", "sve"]}
#: Windows on the same Intel CPU: py-cpuinfo's CPUID table names no AMX or AVX-512 BF16 flags
INTEL_WINDOWS = {"brand_raw": "Intel(R) Xeon(R) Platinum 8480+", "flags": ["avx", "avx2", "avx512f", "fma"]}


def test_cpu_info_intel_with_amx():
    info = machine.cpu_info(INTEL_AMX, system="Linux")
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+" and info["source"] == "py-cpuinfo"
    assert info["isa"] == {"AMX": True, "AVX-512 BF16": True, "AVX-512F": True, "AVX2": True, "FMA": True}


def test_cpu_info_amd_without_amx():
    info = machine.cpu_info(AMD_EPYC, system="Linux")
    assert info["model"] == "AMD EPYC 9R14 96-Core Processor"
    assert info["isa"] == {"AMX": False, "AVX-512 BF16": True, "AVX-512F": True, "AVX2": True, "FMA": True}
    assert machine.isa_text(info["isa"]) == "AMX no, AVX-512 BF16 yes, AVX-512F yes, AVX2 yes, FMA yes"


def test_cpu_info_arm_windows_and_unknown():
    arm = machine.cpu_info(ARM, system="Linux")  # ARM's features: known, and none of these x86 sets
    assert set(arm["isa"].values()) == {False} and arm["model"]
    windows = machine.cpu_info(INTEL_WINDOWS, system="Windows")  # absent there: unknown, not "no"
    assert windows["isa"] == {"AMX": None, "AVX-512 BF16": None, "AVX-512F": True, "AVX2": True, "FMA": True}
    assert machine.cpu_info(INTEL_AMX, system="Windows")["isa"]["AMX"] is True  # present is present
    missing = machine.cpu_info({}, system="Darwin")  # py-cpuinfo found nothing: unknown, not absent
    assert set(missing["isa"].values()) == {None} and missing["source"].startswith("unknown") and missing["model"]
    assert "AMX unknown" in machine.isa_text(missing["isa"])


def test_cpu_info_of_this_machine():
    """py-cpuinfo's own answer: every instruction set reported; on Linux x86 at least one is known."""
    info = machine.cpu_info()
    assert info["model"] and set(info["isa"]) == {name for name, _ in machine.ISA_FLAGS}
    if platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64"):
        assert info["source"] == "/proc/cpuinfo" and None not in info["isa"].values()


def test_usable_cores():
    n = machine.usable_cores()
    assert 1 <= n <= (os.cpu_count() or 1)
    if hasattr(os, "sched_getaffinity"):
        assert n == len(os.sched_getaffinity(0))


def test_training_flops_formula():
    spec = make_spec("chapter")
    macs = machine.forward_macs(spec, 224)
    assert macs == 762_297_352  # the chapter's convolutions at 224, one image
    assert machine.step_flops(spec, 224, 64, "infer") == 2 * macs * 64
    assert machine.step_flops(spec, 224, 64, "train") == 3 * 2 * macs * 64
    assert machine.gemm_gflops(1000, 0.5) == pytest.approx(4.0)


@pytest.mark.parametrize("name", TRAINABLE)
def test_gemm_probe(name):
    load(name)
    probe = backends.companion(name, "bench").gemm
    fp32 = machine.measure_gemm(name, probe, "fp32", 96, repeats=2)
    assert fp32["error"] is None and fp32["op"] and fp32["device"]
    assert len(fp32["seconds"]) == 2 and all(t > 0 for t in fp32["seconds"])
    assert fp32["gflops"] == pytest.approx(2 * 96 ** 3 / min(fp32["seconds"]) / 1e9) and fp32["gflops"] > 0
    bf16 = machine.measure_gemm(name, probe, "bf16", 96, repeats=1)
    if name == "mxnet":  # no bfloat16 dot: an error entry, not an exception
        assert bf16["gflops"] is None and "no bfloat16 kernel" in bf16["error"]
    else:
        assert bf16["error"] is None and bf16["gflops"] > 0
    best = machine.best_gemm([fp32, bf16])
    assert best["fp32"]["gflops"] == fp32["gflops"] and best["fp32"]["framework"] == name
