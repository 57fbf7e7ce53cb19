"""The bench's targets: each a name, a verdict (met, not met, or ``None`` when not measured) and the
figures behind it. The wording lives in the templates below."""
from __future__ import annotations

from .. import machine
from .figures import round_ratios

TARGET_PIPELINE = 0.05   # data pipeline time per batch / training step time
TARGET_MEMORY = 0.05     # growth allowed from the first chunk to the last
TARGET_PEER = 1.0        # default fp32 training vs the best peer of its own framework
TARGET_SPREAD = 1.25     # slowest default path vs the fastest backend at the same precision
TARGET_GEMM = 0.70       # the fastest training path's GFLOP/s vs the machine's GEMM rate (fp32, bf16)
TARGET_EPOCH = 0.90      # an epoch's throughput (warm: every epoch after the first) vs the step rate

PEER = "{backend}: default fp32 training >= {target:g}x the best peer of its framework"
PEER_MET = ("{ratio:.2f}x the {peer} path ({mine:.1f} vs {theirs:.1f} img/s; rounds "
            "{low:.2f}-{high:.2f}x{straddles})")
STRADDLES = "; the rounds straddle the target"
SPREAD = "every backend's default {precision} training within {target:g}x of the fastest backend's"
SPREAD_MET = "fastest {top} {top_img_s:.1f} img/s, slowest {low} {low_img_s:.1f} img/s ({gap:.2f}x)"
GEMM = "fastest {precision} training path >= {target:.0%} of the machine's {precision} GEMM rate"
GEMM_MET = "{backend} {path}: {gflops:.0f} of {gemm:.0f} GFLOP/s ({fraction:.0%})"
GEMM_MISSING = "not measured (needs {precision} in --precision and a GEMM probe)"
PIPELINE = "data pipeline < {target:.0%} of a training step at 224"
PIPELINE_MET = "largest share {share:.1%} ({where}){note}"
PIPELINE_ELSEWHERE = " (measured at resize {resize}, not 224)"
MEMORY = "no memory growth (peak and current RSS after the last chunk within {target:.0%} of the first)"
MEMORY_MISSING = "not measured (--chunks 0 or every backend failed)"
EPOCH = "{backend} {precision}: an epoch's throughput (after the first) within {slack:.0%} of the step rate"
EPOCH_MET = ("{ratio:.2f}x (vs the step rate {to_step:.2f}x, vs its own steps {own:.2f}x; first epoch "
             "{first:.2f}x: its first step {excess:+.2f} s over a steady one)")
NOT_FP32 = "not measured (add fp32 to --precision)"
FEWER_THAN_TWO = "fewer than two backends measured"
NO_STEP = "no training step was measured"
NO_STEP_RATE = "no step rate to compare with"


def _target(name: str, met, detail: str) -> dict:
    return {"name": name, "met": met, "detail": detail}


def evaluate_targets(report: dict) -> list[dict]:
    s, results = report["settings"], report["results"]
    targets = peer_targets(s, results) + spread_targets(s, results) + gemm_targets(results)
    targets.append(pipeline_target(s, report["pipeline"]))
    targets.append(memory_target(report["memory"]))
    return targets + epoch_targets(report.get("epochs", []))


def _find(results, backend, path, precision):
    return next((r for r in results if (r["backend"], r["path"], r["precision"]) == (backend, path, precision)),
                None)


def peer_targets(s: dict, results: list) -> list[dict]:
    """The default path against its framework's best peer."""
    targets = []
    for b in s["backends"]:
        name = PEER.format(backend=b, target=TARGET_PEER)
        r = _find(results, b, "default", "fp32")
        if r is None:
            targets.append(_target(name, None, NOT_FP32))
        elif r.get("error") or r.get("ratio_best_peer_train") is None:
            targets.append(_target(name, False, f"error: {r.get('error') or 'no peer ran'}"))
        else:
            path, precision = r["best_peer"].split()
            top = _find(results, b, path, precision)
            low, high = round_ratios(top["train_steps_s"], r["train_steps_s"]) or (r["ratio_best_peer_train"],) * 2
            detail = PEER_MET.format(ratio=r["ratio_best_peer_train"], peer=r["best_peer"], mine=r["train_img_s"],
                                     theirs=top["train_img_s"], low=low, high=high,
                                     straddles=STRADDLES if low < TARGET_PEER <= high else "")
            targets.append(_target(name, r["ratio_best_peer_train"] >= TARGET_PEER, detail))
    return targets


def spread_targets(s: dict, results: list) -> list[dict]:
    """The backends against each other, at each precision."""
    targets = []
    for precision in s.get("precisions", ()):
        rows = [r for r in results if r["path"] == "default" and r["precision"] == precision and not r.get("error")]
        name = SPREAD.format(precision=precision, target=TARGET_SPREAD)
        if len(rows) < 2:
            targets.append(_target(name, None, FEWER_THAN_TWO))
            continue
        top, low = max(rows, key=lambda r: r["train_img_s"]), min(rows, key=lambda r: r["train_img_s"])
        gap = top["train_img_s"] / low["train_img_s"]
        targets.append(_target(name, gap <= TARGET_SPREAD, SPREAD_MET.format(
            top=top["backend"], top_img_s=top["train_img_s"], low=low["backend"], low_img_s=low["train_img_s"],
            gap=gap)))
    return targets


def gemm_targets(results: list) -> list[dict]:
    """The fastest path against the machine's GEMM rate."""
    targets = []
    for precision in machine.GEMM_PRECISIONS:
        name = GEMM.format(precision=precision, target=TARGET_GEMM)
        rows = [r for r in results if r["precision"] == precision and r.get("gemm_fraction_train") is not None]
        if not rows:
            targets.append(_target(name, None, GEMM_MISSING.format(precision=precision)))
            continue
        top = max(rows, key=lambda r: r["gemm_fraction_train"])
        targets.append(_target(name, top["gemm_fraction_train"] >= TARGET_GEMM, GEMM_MET.format(
            backend=top["backend"], path=top["path"], gflops=top["train_gflops"], gemm=top["gemm_gflops"],
            fraction=top["gemm_fraction_train"])))
    return targets


def pipeline_target(s: dict, pipeline: list) -> dict:
    shares = [(f"{p['layout']} vs {k}", v) for p in pipeline for k, v in p["share_of_train_step"].items()]
    name = PIPELINE.format(target=TARGET_PIPELINE)
    if not shares:
        return _target(name, None, NO_STEP)
    where, worst = max(shares, key=lambda t: t[1])
    note = "" if s["resize"] == 224 else PIPELINE_ELSEWHERE.format(resize=s["resize"])
    return _target(name, worst < TARGET_PIPELINE, PIPELINE_MET.format(share=worst, where=where, note=note))


def memory_target(memory: list) -> dict:
    name = MEMORY.format(target=TARGET_MEMORY)
    mem = [m for m in memory if not m.get("error")]
    errors = [m for m in memory if m.get("error")]
    if not mem and not errors:
        return _target(name, None, MEMORY_MISSING)
    parts = [f"{m['backend']} peak {m['peak_growth']:+.1%}, current {m['rss_growth']:+.1%}" for m in mem]
    parts += [f"{m['backend']} error" for m in errors]
    return _target(name, all(m["within_target"] for m in mem) and not errors, "; ".join(parts))


def epoch_targets(epochs: list) -> list[dict]:
    targets = []
    for e in epochs:
        name = EPOCH.format(backend=e["backend"], precision=e["precision"], slack=1 - TARGET_EPOCH)
        done = [ep for ep in e.get("epochs", []) if ep.get("ratio_to_step") is not None and ep.get("prefetch", True)]
        if not done:
            targets.append(_target(name, False if e.get("error") else None,
                                   f"error: {e['error']}" if e.get("error") else NO_STEP_RATE))
            continue
        later, first = done[-1], done[0]
        # the stricter of the two: against the step rate timed alone, and against its own steady steps
        own = later.get("ratio_to_own_steps") or later["ratio_to_step"]
        ratio = min(later["ratio_to_step"], own)
        targets.append(_target(name, ratio >= TARGET_EPOCH, EPOCH_MET.format(
            ratio=ratio, to_step=later["ratio_to_step"], own=own, first=first["ratio_to_step"],
            excess=first["first_step_excess_s"])))
    return targets
