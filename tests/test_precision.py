"""``--precision auto`` and the CPU class: the choice from injected step timings, the cache (damaged and
foreign files ignored), explicit precisions winning, precisions refused before training where a framework
cannot run them, and real runs (a probe changes nothing in the run; an AVX2-capped run chooses fp32)."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nin_multi import machine, precision
from nin_multi.cli import build_parser
from nin_multi.cli.common import config_from_args
from nin_multi.config import TrainConfig
from nin_multi.errors import ConfigError
from nin_multi.spec import make_spec

from conftest import ROOT, TRAINABLE, load

AMX = {"AMX": True, "AVX-512 BF16": True, "AVX-512F": True, "AVX2": True, "FMA": True}
ZEN4 = {"AMX": False, "AVX-512 BF16": True, "AVX-512F": True, "AVX2": True, "FMA": True}
SKYLAKE = {"AMX": False, "AVX-512 BF16": False, "AVX-512F": True, "AVX2": True, "FMA": True}
ZEN3 = {"AMX": False, "AVX-512 BF16": False, "AVX-512F": False, "AVX2": True, "FMA": True}
ARM = {"AMX": False, "AVX-512 BF16": False, "AVX-512F": False, "AVX2": False, "FMA": False}


# -- the CPU class ----------------------------------------------------------------------------------------
def test_cpu_class_from_the_instruction_sets():
    assert [machine.cpu_class(isa, env={}) for isa in (AMX, ZEN4, SKYLAKE, ZEN3, ARM)] == \
        ["AMX", "AVX-512 BF16", "AVX-512", "AVX2", "other"]
    assert machine.cpu_class({"AMX": None, "AVX-512 BF16": None, "AVX-512F": True, "AVX2": True}, env={}) == "AVX-512"


def test_an_isa_cap_lowers_the_class_and_never_raises_it():
    for env in ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, {"DNNL_MAX_CPU_ISA": "avx2"},
                {"XLA_FLAGS": "--xla_force_host_platform_device_count=2 --xla_cpu_max_isa=AVX2"}):
        assert machine.cpu_class(AMX, env=env) == "AVX2"
    assert machine.cpu_class(AMX, env={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}) == "AVX-512"
    assert machine.cpu_class(AMX, env={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}) == "AVX-512 BF16"
    assert machine.cpu_class(ZEN3, env={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}) == "AVX2"  # a cap adds nothing
    assert machine.cpu_class(AMX, env={"ONEDNN_MAX_CPU_ISA": "PENTIUM"}) == "AMX"  # unknown: oneDNN ignores it too
    both = {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "XLA_FLAGS": "--xla_cpu_max_isa=AVX2"}  # the lowest cap holds
    assert machine.cpu_class(AMX, env=both) == "AVX2" and machine.isa_cap(both) == ("XLA_FLAGS", "AVX2")


def test_describe_names_the_class_the_cores_the_cap_and_a_gpu():
    cores = machine.usable_cores()
    assert machine.describe(isa=ZEN3, env={}) == f"CPU class AVX2 ({cores} cores)"
    assert machine.describe(isa=AMX, env={"ONEDNN_MAX_CPU_ISA": "AVX2"}) == \
        f"CPU class AVX2 ({cores} cores; capped by ONEDNN_MAX_CPU_ISA=AVX2)"
    assert machine.describe("cuda:0", isa=AMX, env={}) == f"CPU class AMX ({cores} cores), GPU cuda:0"


def test_proc_cpuinfo_is_read_like_py_cpuinfo(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu avx avx2 fma\n\n"
                 "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n")
    info = machine.cpu_info(machine._proc_cpuinfo(str(f)), system="Linux")
    assert info["model"] == "AMD EPYC 7B13" and info["source"] == "/proc/cpuinfo"
    assert machine.cpu_class(info["isa"], env={}) == "AVX2"
    assert machine._proc_cpuinfo(str(tmp_path / "missing")) == {}


# -- the choice ---------------------------------------------------------------------------------------------
def test_choice_from_injected_timings():
    assert precision.choose({"fp32": 1.0, "bf16": 0.45}, {}, "AMX") == \
        ("bf16", "bf16 step 2.2x faster than fp32 here (CPU class AMX)")
    assert precision.choose({"fp32": 1.0, "bf16": 5.4}, {}, "AVX2") == \
        ("fp32", "bf16 step 5.4x slower than fp32 here (CPU class AVX2: no AVX-512 BF16 or AMX)")
    # within 5%: fp32, which is then at most 5% slower than bf16
    assert precision.choose({"fp32": 1.0, "bf16": 0.97}, {}, "AMX")[0] == "fp32"
    assert precision.choose({"fp32": 1.0, "bf16": 0.95}, {}, "AMX")[0] == "bf16"
    assert precision.choose({"fp32": 1.0, "bf16_first_step": 3.1}, {}, "AVX2") == \
        ("fp32", "bf16's first step (one-off costs included) took 3.1x an fp32 step here, so it was not timed "
                 "further (CPU class AVX2: no AVX-512 BF16 or AMX)")
    failed = {"bf16": "failed here (MXNetError: could not create a primitive descriptor iterator)"}
    assert precision.choose({"fp32": 1.0}, failed, "AVX2") == \
        ("fp32", f"bf16 {failed['bf16']} (CPU class AVX2: no AVX-512 BF16 or AMX)")
    assert precision.choose({"fp32": 1.0, "bf16": 0.5}, {}, "AVX2", device="cuda:0")[1].endswith("(on cuda:0)")
    with pytest.raises(ConfigError):
        precision.choose({}, {}, "AMX")


@pytest.mark.parametrize("timings, expected", [({"fp32": 1.0, "bf16": 0.4}, "bf16"),
                                               ({"fp32": 1.0, "bf16": 1.3}, "fp32")])
def test_auto_never_picks_more_than_five_percent_slower_than_the_faster(timings, expected):
    chosen, _ = precision.choose(timings, {}, "AMX")
    assert chosen == expected and timings[chosen] <= 1.05 * min(timings.values())


def test_where_a_precision_runs():
    assert precision.unsupported("mxnet", "bf16", "cpu", "AVX2") == "needs a CPU with AVX-512 BF16 or AMX in mxnet"
    assert precision.unsupported("mxnet", "bf16", "cpu", "AVX-512") is not None
    assert precision.unsupported("mxnet", "bf16", "cpu", "AVX-512 BF16") is None
    assert precision.unsupported("mxnet", "bf16", "gpu:0") == "runs on a CPU only in mxnet"
    assert precision.unsupported("tensorflow", "fp16", "cpu", "AMX") == "needs a GPU in tensorflow"
    assert precision.unsupported("tensorflow", "fp16", "gpu:0") is None
    assert precision.unsupported("jax", "fp16", "cpu", "AMX").startswith("is not offered by the jax backend")
    assert all(precision.unsupported(n, p, "cpu", "other") is None for n in ("torch", "tensorflow", "jax")
               for p in ("fp32", "bf16", "fp64"))


class FakeBackend:
    NAME, LAYOUT = "torch", "NCHW"

    @staticmethod
    def device():
        return "cpu"


def fake_measure(calls, timings):
    def measure(backend, spec, cfg, candidates, hardware):
        calls.append((tuple(candidates), hardware, cfg.precision))
        return {p: timings[p] for p in candidates}, {}
    return measure


CFG = TrainConfig(precision="auto", resize=67, batch_size=32)
SPEC = make_spec("chapter")


def test_auto_is_measured_once_then_cached(tmp_path):
    cache, calls = tmp_path / "precision-auto.json", []
    measure = fake_measure(calls, {"fp32": 0.2, "bf16": 0.1})
    cfg, choice = precision.resolve(FakeBackend, SPEC, CFG, {"torch": "1"}, measure, cache)
    assert cfg.precision == "bf16" and cfg.precision_request == "auto" and not choice.cached
    assert calls == [(("fp32", "bf16"), machine.cpu_class() in machine.BF16_HARDWARE, "fp32")]
    assert cfg.precision_choice == choice.line() and cfg.precision_step_seconds == {"fp32": 0.2, "bf16": 0.1}
    again, choice2 = precision.resolve(FakeBackend, SPEC, CFG, {"torch": "1"}, measure, cache)
    assert len(calls) == 1 and choice2.cached and again.precision == "bf16"
    assert choice2.line().endswith("(measured earlier on this machine, cached)")
    # another framework version, size or batch is measured anew
    precision.resolve(FakeBackend, SPEC, CFG, {"torch": "2"}, measure, cache)
    precision.resolve(FakeBackend, SPEC, dataclasses.replace(CFG, resize=96), {"torch": "1"}, measure, cache)
    precision.resolve(FakeBackend, SPEC, dataclasses.replace(CFG, batch_size=64), {"torch": "1"}, measure, cache)
    assert len(calls) == 4 and len(json.loads(cache.read_text())["entries"]) == 4


@pytest.mark.parametrize("content", [b"", b"\x00\xff garbage", b"[1, 2]",
                                     b'{"format": "someone-else/1", "entries": {}}',
                                     b'{"format": "nin_multi.precision-auto/1", "entries": []}',
                                     b"[" * 100_000, b" " * (2 << 20)])
def test_a_damaged_or_foreign_cache_is_ignored_and_replaced(tmp_path, content):
    cache, calls = tmp_path / "precision-auto.json", []
    cache.write_bytes(content)
    measure = fake_measure(calls, {"fp32": 0.1, "bf16": 0.5})
    cfg, choice = precision.resolve(FakeBackend, SPEC, CFG, {}, measure, cache)
    assert cfg.precision == "fp32" and not choice.cached and len(calls) == 1
    assert json.loads(cache.read_text())["format"] == precision.CACHE_FORMAT


def test_bad_entries_in_a_cache_are_measured_again(tmp_path):
    cache, calls = tmp_path / "precision-auto.json", []
    measure = fake_measure(calls, {"fp32": 0.1, "bf16": 0.5})
    precision.resolve(FakeBackend, SPEC, CFG, {}, measure, cache)
    data = json.loads(cache.read_text())
    for bad in ({"precision": "fp8"}, {"precision": "bf16", "reason": 1, "seconds": {}, "refused": {}},
                {"precision": "bf16", "reason": "", "seconds": {"bf16": -1}, "refused": {}},
                {"precision": "bf16", "reason": "", "seconds": {"bf16": True}, "refused": {}}):
        data["entries"] = {k: bad for k in data["entries"]}
        cache.write_text(json.dumps(data))
        _, choice = precision.resolve(FakeBackend, SPEC, CFG, {}, measure, cache)
        assert not choice.cached
    assert len(calls) == 5


def test_an_unwritable_cache_only_costs_a_measurement(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    calls = []
    for _ in range(2):
        cfg, choice = precision.resolve(FakeBackend, SPEC, CFG, {}, fake_measure(calls, {"fp32": 0.1, "bf16": 0.5}),
                                        blocker / "sub" / "precision-auto.json")
        assert cfg.precision == "fp32" and not choice.cached
    assert len(calls) == 2


def test_an_explicit_precision_always_wins(tmp_path):
    calls = []
    for p in ("fp32", "bf16", "fp64"):
        cfg = dataclasses.replace(CFG, precision=p)
        cache = tmp_path / "c.json"
        assert precision.resolve(FakeBackend, SPEC, cfg, {}, fake_measure(calls, {}), cache) == (cfg, None)
    assert calls == [] and not (tmp_path / "c.json").exists()


def parse(*argv, command="train"):
    return build_parser().parse_args([command, *argv])


def test_auto_is_the_fast_recipes_and_only_when_nothing_else_is_asked():
    assert config_from_args(parse("--recipe", "fast"), keep_auto=True).precision == "auto"
    assert config_from_args(parse("--recipe", "fast", "--precision", "bf16"), keep_auto=True).precision == "bf16"
    assert config_from_args(parse("--recipe", "fast", "--precision", "fp64"), keep_auto=True).precision == "fp64"
    # the books' recipes keep fp32, a recipe that pins fp64 keeps it
    for recipe, expected in (("d2l-1st-edition", "fp32"), ("d2l-2nd-edition", "fp32"), ("standalone-ninnet", "fp64")):
        assert config_from_args(parse("--recipe", recipe), keep_auto=True).precision == expected
    # commands that compare frameworks run them all in one precision
    assert config_from_args(parse("--recipe", "fast", "--backends", "torch", command="reproduce")).precision == "fp32"
    assert config_from_args(parse("--recipe", "fast", "--precision", "auto"), keep_auto=True).precision == "auto"


def test_auto_is_offered_by_train_only(capsys):
    with pytest.raises(SystemExit):
        parse("--weights", "w.safetensors", "--precision", "auto", command="evaluate")
    assert "invalid choice: 'auto'" in capsys.readouterr().err


CAPPED = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}


def run_cli(*argv, env=None):
    return subprocess.run([sys.executable, "-m", "nin_multi", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env or os.environ)


@pytest.mark.parametrize("name, prec", [("mxnet", "bf16"), ("tensorflow", "fp16"), ("mxnet", "fp16")])
def test_a_precision_that_cannot_run_here_is_refused_before_training(name, prec, tmp_path):
    """Under an AVX2 cap every machine is a CPU without bf16 hardware, where MXNet's oneDNN has no bf16
    kernels (uncapped they ended in a traceback: 'could not create a primitive descriptor iterator')."""
    load(name)
    done = run_cli("train", "--backend", name, "--precision", prec, "--variant", "mini", "--resize", "28",
                   "--data-dir", str(tmp_path / "no-data"), "--out", str(tmp_path / "run"), env=CAPPED)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"nin-multi: error: --precision {prec} needs a ")
    assert "; this is CPU class AVX2 (" in lines[0] and lines[0].endswith(
        "use --precision fp32, or --precision auto, which picks the fastest precision that runs here")
    assert not (tmp_path / "run").exists()  # refused before the data, the run directory or any training


def test_mxnets_trainer_refuses_bf16_without_the_kernels_in_one_line():
    """The in-process API too (bench, sweep, reproduce build Trainers directly), before AMP patches anything."""
    load("mxnet")
    code = ("import nin_multi.backends.mxnet as m\nfrom nin_multi.errors import ConfigError\n"
            "from nin_multi.spec import make_spec\nspec = make_spec('mini', image_size=28)\n"
            "try:\n    m.Trainer(m.build_model(spec, 'kaiming'), 0.05, 'bf16')\n"
            "except ConfigError as e:\n    print(e)\n"
            "m.Trainer(m.build_model(spec, 'kaiming'), 0.05, 'fp32')\nprint('fp32 after the refusal: fine')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=CAPPED)
    assert done.returncode == 0, done.stderr[-2000:]
    first, second = done.stdout.strip().splitlines()[-2:]
    assert first.startswith("--precision bf16 needs a CPU with AVX-512 BF16 or AMX in mxnet; this is CPU class AVX2")
    assert second == "fp32 after the refusal: fine"


@pytest.mark.slow
def test_an_avx2_capped_run_chooses_fp32_and_says_why(sample_dir, tmp_path):
    """The fast recipe as a user on an AVX2 laptop runs it: auto measures, picks fp32 (bf16 is emulated
    there, 5-10x slower), says so on the line after the start-up line and records both in config.json;
    a second run answers from the cache."""
    load("torch")
    env = {**CAPPED, "NIN_MULTI_CACHE_DIR": str(tmp_path / "cache")}
    argv = ["train", "--recipe", "fast", "--backend", "torch", "--data-dir", str(sample_dir), "--subset", "64",
            "--test-subset", "32", "--epochs", "2", "--warmup-epochs", "0.5", "--no-progress", "--overwrite"]
    first = run_cli(*argv, "--out", str(tmp_path / "a"), env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    lines = first.stdout.splitlines()
    assert ", fp32; CPU class AVX2 (" in lines[0] and "capped by ONEDNN_MAX_CPU_ISA=AVX2" in lines[0]
    assert lines[1].startswith("precision auto → fp32: bf16")
    assert "(CPU class AVX2: no AVX-512 BF16 or AMX)" in lines[1]
    assert lines[1].endswith(" s)") and "measured in " in lines[1]
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["precision"] == "fp32" and config["precision_request"] == "auto"
    assert config["precision_choice"] == lines[1] and config["precision_step_seconds"]["fp32"] > 0
    second = run_cli(*argv, "--out", str(tmp_path / "b"), env=env)
    assert second.returncode == 0 and second.stdout.splitlines()[1].endswith(
        "(measured earlier on this machine, cached)")


@pytest.mark.slow
@pytest.mark.parametrize("name", TRAINABLE)
def test_a_run_is_the_same_whether_auto_measured_or_read_the_cache(name, sample_dir, tmp_path, monkeypatch):
    """The probe builds and steps throwaway models with the framework's generators: the run's model is
    seeded again after it, so the measured run and the cached one train identically."""
    from nin_multi.train import train

    backend = load(name)
    monkeypatch.setenv("NIN_MULTI_CACHE_DIR", str(tmp_path / "cache"))
    results = []
    for run in ("measured", "cached"):
        cfg = TrainConfig(backend=name, variant="mini", resize=28, init="kaiming", lr=0.05, batch_size=32, epochs=1,
                          subset=64, test_subset=32, data_dir=str(sample_dir), out=str(tmp_path / run),
                          precision="auto", progress=False)
        lines = []
        _, history = train(cfg, log=lines.append)
        assert lines[1].startswith("precision auto → ") and lines[1].endswith(
            "cached)" if run == "cached" else " s)")
        from nin_multi.weights import load_weights
        results.append((history[-1]["train_loss"], load_weights(tmp_path / run / "weights.safetensors")[1]))
    (loss_a, w_a), (loss_b, w_b) = results
    assert loss_a == loss_b and backend.NAME == name
    assert all(np.array_equal(w_a[k], w_b[k]) for k in w_a)


def test_a_precision_timed_in_a_process_of_its_own():
    """MXNet's lower precision changes its whole process, so auto times it in a child process (on a CPU
    with MXNet's bf16 kernels); the protocol is the same for any backend: a step time, or its failure."""
    load("torch")
    cfg = TrainConfig(backend="torch", variant="mini", resize=28, batch_size=8)
    seconds, first_only = precision._time_alone(cfg, "fp32")
    assert 0 < seconds < 60 and first_only is False
    seconds, first_only = precision._time_alone(cfg, "fp32", stop_above=1e-9)  # any first step is longer
    assert seconds > 0 and first_only is True
    with pytest.raises(RuntimeError, match="^ConfigError: "):
        precision._time_alone(dataclasses.replace(cfg, backend="jax"), "fp16")  # jax offers no fp16
