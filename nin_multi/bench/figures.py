"""The figures derived from the rows measured side by side: each speed-up is the ratio of two paths
measured in the same worker, their steps interleaved (one step of each path per round), so a machine
whose load changes during the run slows every path alike. ``train x``: against the chapter path;
``vs peer``: against the faster of the chapter and fast paths (the best a user could get without this
project); GFLOP/s from the spec's multiply-adds, as a fraction of the machine's best GEMM rate."""
from __future__ import annotations

_DERIVED = ("ratio_train", "ratio_infer", "ratio_train_range", "ratio_infer_range", "best_peer",
            "ratio_best_peer_train", "ratio_best_peer_infer", "train_gflops", "infer_gflops",
            "gemm_gflops", "gemm_fraction_train", "gemm_fraction_infer")


def peers(backend: str, results: list, fast_is_default=frozenset()) -> list[dict]:
    """The paths a user of this framework could run without this project (measured without error);
    ``fast_is_default``: backends whose default fp32 path is the framework's fast path itself."""
    return [c for c in results if c["backend"] == backend and not c.get("error") and
            (c["path"] in ("chapter", "fast") or
             (backend in fast_is_default and c["path"] == "default" and c["precision"] == "fp32"))]


def derive(r: dict, results: list, flops: dict, best_gemm: dict, fast_is_default=frozenset()) -> None:
    """The ratios and rates of one row, from the rows measured beside it and the machine's GEMM rate."""
    r.update(dict.fromkeys(_DERIVED))
    if r.get("error"):
        return
    ref = next((c for c in results if c["backend"] == r["backend"] and c["path"] == "chapter"
                and not c.get("error")), None)
    if ref:
        r["ratio_train"] = r["train_img_s"] / ref["train_img_s"]
        r["ratio_infer"] = r["infer_img_s"] / ref["infer_img_s"]
        r["ratio_train_range"] = round_ratios(ref["train_steps_s"], r["train_steps_s"])
        r["ratio_infer_range"] = round_ratios(ref["infer_steps_s"], r["infer_steps_s"])
    mine = peers(r["backend"], results, fast_is_default)
    if mine:
        top = max(mine, key=lambda c: c["train_img_s"])
        r["best_peer"] = f"{top['path']} {top['precision']}"
        r["ratio_best_peer_train"] = r["train_img_s"] / top["train_img_s"]
        r["ratio_best_peer_infer"] = r["infer_img_s"] / max(c["infer_img_s"] for c in mine)
    r["train_gflops"] = flops["train"] / r["train_step_s"] / 1e9
    r["infer_gflops"] = flops["infer"] / r["infer_step_s"] / 1e9
    rate = best_gemm.get(r["precision"], {}).get("gflops")
    if rate:
        r["gemm_gflops"] = rate
        r["gemm_fraction_train"] = r["train_gflops"] / rate
        r["gemm_fraction_infer"] = r["infer_gflops"] / rate


def round_ratios(reference: list, times: list) -> list | None:
    """[lowest, highest] speed-up over the timed rounds, each round's step against the chapter path's
    step of the same round. A ratio of medians hides how far the machine moved during the run; on a
    shared machine this spread can be wider than the distance to a target."""
    ratios = [a / b for a, b in zip(reference, times) if b > 0]
    return [min(ratios), max(ratios)] if ratios else None


def attach_epochs(epochs: list, results: list) -> None:
    """Each end-to-end epoch against its default path's steady step rate, and a steady step inside the
    epoch against one timed alone (interleaved with the peers)."""
    for e in epochs:
        step = next((r for r in results if (r["backend"], r["path"], r["precision"]) ==
                     (e["backend"], "default", e["precision"]) and not r.get("error")), None)
        e["step_img_s"] = step["train_img_s"] if step else None
        for ep in e.get("epochs", []):
            ep["ratio_to_step"] = ep["img_s"] / e["step_img_s"] if e["step_img_s"] else None
            ep["step_slowdown"] = ep["steady_step_s"] / step["train_step_s"] if step else None
