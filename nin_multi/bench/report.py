"""The bench's table: the machine, one line per path, the pipeline, the end-to-end epochs, memory and
the targets. The fixed wording lives in the templates below; the functions only fill them in."""
from __future__ import annotations

from .. import machine
from .accuracy import accuracy_lines
from .targets import TARGET_MEMORY

HEADER = ("NiN ({variant}) at {resize}x{resize}, batch {batch_size}: median of {steps} steps after {warmup} "
          "warm-up, threads {threads} ({cpus})")
CPU = "CPU: {model}, {cpus}; CPU class {cls}{cap}; {isa}"
COLUMNS = ("{:<11} {:<8} {:<28} {:<9} {:>11} {:>11} {:>8} {:>11} {:>8} {:>8} {:>8} {:>7}".format(
    "backend", "path", "what", "precision", "train img/s", "infer img/s", "train x", "(rounds)", "infer x",
    "vs peer", "GFLOP/s", "% GEMM"))
ROW_LEFT = "{backend:<11} {path:<8} {description:<28} {precision:<9}"
ROW_FIGURES = "{:>11} {:>11} {:>8} {:>11} {:>8} {:>8} {:>8} {:>7}"
LEGEND = ("train x / infer x: vs the chapter path; vs peer: training vs the faster of the chapter and fast "
          "paths (fp32); GFLOP/s: training, 3 x 2 x forward multiply-adds per image; % GEMM: of the best "
          "GEMM rate at the row's precision")
FIRST_STEPS = "first training step, s (tracing or compiling included): "
OTHERS = "CPU time used by other processes meanwhile: "
OTHERS_WARNING = "  (timings are disturbed above a few percent)"
GEMM_LINE = "GEMM {precision}: {head}; per framework: {parts}"
GEMM_NONE = "GEMM: not measured (--gemm-size 0, or every backend failed)"
NO_GPU = "; no GPU found: every figure is the CPU's (no CUDA path was run)"
PIPELINE = "pipeline {layout}: {img_s:.0f} img/s ({ms:.1f} ms per batch of {batch} at {resize}x{resize}): {shares}"
MEMORY = ("memory {backend} ({path} {precision}, {n} chunks of {steps} steps): peak RSS {peaks} MB, current RSS "
          "{now} MB; last chunk {verdict} {target:.0%} of the first (peak {peak:+.1%}, current {rss:+.1%})")
EPOCHS = "end to end (train_epoch, fresh Trainer, at {resize}x{resize}; excess over a steady step's share):"
EPOCH = ("{label} {img_s:.1f} img/s{ratio} (first step {first:+.2f} s, last batch {last:+.2f} s, outside steps "
         "{outside:.2f} s{slow})")
MARKS = {True: "met", False: "NOT MET", None: "n/a"}


def _num(v, fmt="{:.1f}"):
    return "-" if v is None else fmt.format(v)


def _pct(v):
    return "-" if v is None else f"{v:.0%}"


def _cpus(env: dict) -> str:
    usable = env.get("usable_cpus")
    if usable is not None and usable != env.get("cpus"):
        return f"{usable} of {env.get('cpus')} CPUs usable"
    return f"{env.get('cpus')} CPUs"


def machine_lines(report: dict) -> list[str]:
    """The CPU, its instruction sets, the GEMM rates and where each backend computed."""
    m, env = report.get("machine", {}), report["environment"]
    cpu = m.get("cpu") or env.get("cpu") or {}
    cap = env.get("isa_cap")
    lines = [CPU.format(model=cpu.get("model", "unknown"), cpus=_cpus(env),
                        cls=env.get("cpu_class") or machine.cpu_class(cpu.get("isa", {})),
                        cap=f" (capped by {cap[0]}={cap[1]})" if cap else "",
                        isa=machine.isa_text(cpu.get("isa", {})) or "instruction sets unknown")]
    by_precision: dict[str, list[str]] = {}
    for e in m.get("gemm", []):
        text = f"{e['framework']} {e['gflops']:.0f}" if e.get("gflops") else f"{e['framework']} n/a"
        by_precision.setdefault(e["precision"], []).append(text)
    for precision, parts in by_precision.items():
        top = m.get("gemm_best", {}).get(precision)
        head = (f"{top['gflops']:.0f} GFLOP/s ({top['op']}, n={top['n']})" if top else "not measured")
        lines.append(GEMM_LINE.format(precision=precision, head=head, parts=", ".join(parts)))
    if not by_precision:
        lines.append(GEMM_NONE)
    devices = {k[:-len("_device")]: v for k, v in env.items() if k.endswith("_device")}
    if devices:
        gpu = [f"{k} {v}" for k, v in devices.items() if v != "cpu"]
        lines.append("devices: " + ", ".join(f"{k} {v}" for k, v in devices.items()) + ("" if gpu else NO_GPU))
    return lines


def row_line(r: dict) -> str:
    left = ROW_LEFT.format(**r)
    if r.get("error"):
        return f"{left} error: {r['error']}"
    spread = r.get("ratio_train_range")
    spread = f"{spread[0]:.2f}-{spread[1]:.2f}" if spread and r["path"] != "chapter" else ""
    return left + " " + ROW_FIGURES.format(
        _num(r["train_img_s"]), _num(r["infer_img_s"]), _num(r["ratio_train"], "{:.2f}x"), spread,
        _num(r["ratio_infer"], "{:.2f}x"), _num(r.get("ratio_best_peer_train"), "{:.2f}x"),
        _num(r.get("train_gflops"), "{:.0f}"), _pct(r.get("gemm_fraction_train")))


def _after_rows(report: dict) -> list[str]:
    lines = [LEGEND]
    firsts = [f"{r['backend']} {r['path']} {r['precision']} {r['first_train_step_s']:.1f}" for r in report["results"]
              if r.get("first_train_step_s") is not None]
    if firsts:
        lines.append(FIRST_STEPS + ", ".join(firsts))
    busy = {k: v for k, v in report["environment"].get("others_cpu_share", {}).items() if v is not None}
    if busy:
        lines.append(OTHERS + ", ".join(f"{v:.0%} during {k}" for k, v in busy.items())
                     + (OTHERS_WARNING if max(busy.values()) > 0.05 else ""))
    return lines


def format_report(report: dict) -> str:
    s, env = report["settings"], report["environment"]
    lines = [HEADER.format(threads=s["threads"] or "all", cpus=_cpus(env), **{
        k: s[k] for k in ("variant", "resize", "batch_size", "steps", "warmup")})] + machine_lines(report) + [""]
    lines += [COLUMNS, "-" * len(COLUMNS)] + [row_line(r) for r in report["results"]] + _after_rows(report) + [""]
    for p in report["pipeline"]:
        shares = ", ".join(f"{v:.1%} of a {k} step" for k, v in p["share_of_train_step"].items()) or "no step measured"
        lines.append(PIPELINE.format(layout=p["layout"], img_s=p["img_s"], ms=p["batch_s"] * 1000,
                                     batch=s["batch_size"], resize=s["resize"], shares=shares))
    lines += epoch_lines(report) + memory_lines(report) + accuracy_lines(report) + ["", "targets"]
    lines += [f"  [{MARKS[t['met']]:^7}] {t['name']}: {t['detail']}" for t in report["targets"]]
    return "\n".join(lines)


def memory_lines(report: dict) -> list[str]:
    lines = []
    for m in report["memory"]:
        if m.get("error"):
            lines.append(f"memory {m['backend']}: error: {m['error']}")
            continue
        peaks = " / ".join(f"{c['max_rss_mb']:.0f}" for c in m["chunks"])
        now = " / ".join(f"{c['rss_mb']:.0f}" for c in m["chunks"]) if m["chunks"][0]["rss_mb"] is not None else "-"
        lines.append(MEMORY.format(backend=m["backend"], path=m["path"], precision=m["precision"], n=len(m["chunks"]),
                                   steps=m["steps_per_chunk"], peaks=peaks, now=now, target=TARGET_MEMORY,
                                   verdict="within" if m["within_target"] else "NOT within",
                                   peak=m["peak_growth"], rss=m["rss_growth"]))
    return lines


def _epoch_part(i: int, ep: dict) -> str:
    ratio = f" = {ep['ratio_to_step']:.2f}x the step rate" if ep.get("ratio_to_step") else ""
    slow = f", steps {ep['step_slowdown']:.2f}x as long as alone" if ep.get("step_slowdown") else ""
    slow += f"; {ep['ratio_to_own_steps']:.2f}x its own steps' rate" if ep.get("ratio_to_own_steps") else ""
    label = "first" if i == 0 else "later" if ep.get("prefetch", True) else "no prefetch"
    return EPOCH.format(label=label, img_s=ep["img_s"], ratio=ratio, first=ep["first_step_excess_s"],
                        last=ep["last_step_excess_s"], outside=ep["outside_steps_s"], slow=slow)


def epoch_lines(report: dict) -> list[str]:
    s, lines = report["settings"], []
    for e in report.get("epochs", []):
        where = f"epoch {e['backend']} {e['precision']}"
        if e.get("error") and not e["epochs"]:
            lines.append(f"{where}: error: {e['error']}")
            continue
        full, short = divmod(e["images"], e["batch_size"])
        shape = f"{full} batches of {e['batch_size']}" + (f" + 1 of {short}" if short else "")
        step = f"steady step {e['step_img_s']:.1f} img/s" if e.get("step_img_s") else "no steady step rate"
        lines.append(f"{where} ({e['images']} images: {shape}; {step}):")
        lines += [f"  {_epoch_part(i, ep)}" for i, ep in enumerate(e["epochs"])]
    if lines:
        lines.insert(0, EPOCHS.format(resize=s["resize"]))
    return lines
