"""The machine probe: the CPU and its instruction sets from /proc/cpuinfo, the training FLOPs formula, and
each framework's GEMM rate (positive, from its own timings; never asserted against a speed)."""
import pytest

from nin_multi import machine
from nin_multi.spec import make_spec

from conftest import TRAINABLE, load

INTEL_AMX = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 fma avx avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: something else entirely
flags\t\t: fpu
"""
AMD_EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse2 fma avx avx2 avx512f avx512_bf16 avx512_vnni
"""
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp sve
CPU implementer\t: 0x41
"""


def test_cpu_info_intel_with_amx():
    info = machine.cpu_info(INTEL_AMX)
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+"  # the first processor's entry
    assert info["isa"] == {"AMX": True, "AVX-512 BF16": True, "AVX-512F": True, "AVX2": True, "FMA": True}


def test_cpu_info_amd_without_amx():
    info = machine.cpu_info(AMD_EPYC)
    assert info["model"] == "AMD EPYC 9R14 96-Core Processor"
    assert info["isa"] == {"AMX": False, "AVX-512 BF16": True, "AVX-512F": True, "AVX2": True, "FMA": True}
    assert machine.isa_text(info["isa"]) == "AMX no, AVX-512 BF16 yes, AVX-512F yes, AVX2 yes, FMA yes"


def test_cpu_info_arm_and_unknown(tmp_path):
    arm = machine.cpu_info(ARM)  # ARM's "Features": known, and none of these x86 sets
    assert set(arm["isa"].values()) == {False} and arm["model"]
    unknown = machine.cpu_info("processor\t: 0\n")  # no flags line: unknown, not absent
    assert set(unknown["isa"].values()) == {None}
    missing = machine.cpu_info(path=str(tmp_path / "no-cpuinfo"))  # macOS, Windows
    assert set(missing["isa"].values()) == {None} and missing["source"].startswith("unknown")
    assert "AMX unknown" in machine.isa_text(missing["isa"])


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
    fp32 = machine.measure_gemm(name, "fp32", 96, repeats=2)
    assert fp32["error"] is None and fp32["op"] and fp32["device"]
    assert len(fp32["seconds"]) == 2 and all(t > 0 for t in fp32["seconds"])
    assert fp32["gflops"] == pytest.approx(2 * 96 ** 3 / min(fp32["seconds"]) / 1e9) and fp32["gflops"] > 0
    bf16 = machine.measure_gemm(name, "bf16", 96, repeats=1)
    if name == "mxnet":  # no bfloat16 dot: an error entry, not an exception
        assert bf16["gflops"] is None and "no bfloat16 kernel" in bf16["error"]
    else:
        assert bf16["error"] is None and bf16["gflops"] > 0
    best = machine.best_gemm([fp32, bf16])
    assert best["fp32"]["gflops"] == fp32["gflops"] and best["fp32"]["framework"] == name
