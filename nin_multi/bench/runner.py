"""The run: every backend in a worker process of its own, one after the other (never two at once: they
would share the cores), then the data pipeline in this process, then the figures and the targets.

A worker of its own (``python -m nin_multi.bench --worker``): its peak memory is its own, its thread
settings (some frameworks fix theirs at import) take effect, a precision mode that patches a framework
process-wide cannot leak into another backend, and a backend that crashes or hangs becomes an error
string in the table instead of ending the run. This process imports no framework."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
import threading
from collections import deque
import numpy as np
import psutil

from .. import machine
from ..errors import NinMultiError
from ..interpreters import describe_exit, worker_env
from ..spec import make_spec
from . import figures, load, protocol
from .pipeline import measure_pipeline
from .targets import evaluate_targets

FLOPS_FORMULA = "train: 3 x 2 x forward multiply-adds x batch; infer: 2 x forward multiply-adds x batch"
_KINDS = {"result": "results", "memory": "memory", "gemm": "gemm", "epoch": "epochs", "accuracy": "accuracy"}


def machine_environment() -> dict:
    """The machine and Python every bench report is tied to (``bench`` and ``bench --workers`` alike)."""
    return {"python": platform.python_version(), "machine": platform.machine(), "cpus": psutil.cpu_count(),
            "usable_cpus": machine.usable_cores(), "numpy": np.__version__, "cpu": machine.cpu_info(),
            "cpu_class": machine.cpu_class(), "isa_cap": machine.isa_cap()}


def run_bench(s: dict, log=None) -> dict:
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    found = {key: [] for key in _KINDS.values()}
    environment = machine_environment()
    plans = {}
    for name in s["backends"]:
        before = load.cpu_counters()
        events = _run_worker(name, s, log)
        environment.setdefault("others_cpu_share", {})[name] = load.others_share(before, load.cpu_counters())
        for e in events:
            kind = e.pop("event")
            if kind in _KINDS:
                found[_KINDS[kind]].append(e)
            elif kind == "environment":
                environment.update(e)
            elif kind == "plan":
                plans[name] = e
        _fill_missing(name, s, found["results"], events, plans.get(name))
    results = _in_table_order(found["results"], s, plans)
    fast_is_default = frozenset(n for n, p in plans.items() if p["fast_is_default"])
    best = machine.best_gemm(found["gemm"])
    spec = make_spec(s["variant"], s.get("in_channels", 1), image_size=s["resize"])
    flops = {kind: machine.step_flops(spec, s["resize"], s["batch_size"], kind) for kind in ("train", "infer")}
    for r in results:
        figures.derive(r, results, flops, best, fast_is_default)
    figures.attach_epochs(found["epochs"], results)
    log("bench: data pipeline")
    layouts = sorted({p["layout"] for p in plans.values()})
    report = {"settings": s, "environment": environment, "results": results,
              "pipeline": measure_pipeline(s, results, layouts), "memory": found["memory"],
              "machine": {"cpu": environment["cpu"], "gemm": found["gemm"], "gemm_best": best,
                          "flops_per_step": flops, "flops_formula": FLOPS_FORMULA},
              "epochs": found["epochs"], "accuracy": found["accuracy"]}
    report["targets"] = evaluate_targets(report)
    return report


def _plan_of(s: dict, plan: dict | None) -> list[tuple[str, str]]:
    return [tuple(p) for p in plan["paths"]] if plan else protocol.planned(s)


def _in_table_order(results: list, s: dict, plans: dict) -> list:
    order = {(b, path, p): i for i, (b, (path, p)) in
             enumerate((b, planned) for b in s["backends"] for planned in _plan_of(s, plans.get(b)))}
    return sorted(results, key=lambda r: order.get((r["backend"], r["path"], r["precision"]), len(order)))


def _fill_missing(name: str, s: dict, results: list, events: list, plan: dict | None) -> None:
    """A row with the worker's error for every path it did not report (it crashed or was stopped)."""
    done = {(r["path"], r["precision"]) for r in results if r["backend"] == name}
    failure = next((e["error"] for e in events if e.get("error") and e.get("fatal")), "no result")
    for path, precision in _plan_of(s, plan):
        if (path, precision) not in done:
            results.append(protocol.row(name, path, precision, error=failure, layout=plan and plan["layout"],
                                        description=plan and plan["descriptions"].get(path)))


def _run_worker(name: str, s: dict, log) -> list[dict]:
    """One backend's worker, on the interpreter bound to it (``nin_multi.interpreters``); a bad binding is
    that backend's error row, like a worker that crashed."""
    from nin_multi import backends

    try:
        python = backends.check_interpreter(name)
    except NinMultiError as e:
        return [{"event": "failure", "fatal": True, "error": str(e)[:300]}]
    cmd = [python, "-m", "nin_multi.bench", "--worker", json.dumps({**s, "backend": name})]
    log(f"bench: {name} (worker process{'' if python == sys.executable else ', ' + python})")
    events = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=worker_env(unbind=(name,))) as proc:
        err_lines: deque[str] = deque(maxlen=50)  # the worker's stderr: its last line names a crash
        drain = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)
        drain.start()
        for line in proc.stdout:
            e = protocol.parse(line)
            if e is None:
                continue
            if e["event"] == "log":
                log(f"bench: {name}: {e['message']}")
                continue
            events.append(e)
        proc.wait()
        drain.join()
    if proc.returncode != 0 and not any(e.get("fatal") for e in events):
        tail = [ln.strip() for ln in err_lines if ln.strip()]
        why = tail[-1] if tail else "no output"
        events.append({"event": "failure", "fatal": True,
                       "error": f"worker {describe_exit(proc.returncode)}: {why}"[:300]})
    return events
