"""The Markdown table of a `make gpu-check` report (gpu-check.json -> gpu-check.md), for docs/benchmarks.md.

    python benchmarks/gpu_report.py gpu-check/gpu-check.json     # prints the Markdown again
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _fmt(x, digits=0) -> str:
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def render_markdown(r: dict) -> str:
    env = r["environment"]
    gpus = env.get("gpus") or []
    device = (f"{gpus[0]} x{len(gpus)}" if gpus else f"CPU ({env.get('cpu')}, {env.get('cores')} cores; dry run)")
    ops = ", ".join(env.get("horovod_ops") or []) or "-"
    lines = [
        f"### gpu-check on {gpus[0] if gpus else 'CPU (dry run)'}, {r['date']}",
        "",
        "| | |",
        "|---|---|",
        f"| device | {device} |",
        f"| driver | {env.get('driver') or '-'} |",
        f"| torch | {env['torch']} (CUDA {env.get('cuda') or 'none'}) |",
        f"| NCCL | {env.get('nccl') or '-'} |",
        f"| Horovod | {env.get('horovod')} ({ops}) |",
        f"| Python | {env['python']} |",
        f"| hvdgan commit | {env.get('commit') or '-'} |",
        f"| command | `{r['command']}` |",
        f"| result | {'all checks passed' if r['ok'] else 'CHECKS FAILED'} in {r['seconds']:.0f} s |",
        "",
        "| check | result | seconds | detail |",
        "|---|---|---:|---|",
    ]
    for c in r["checks"]:
        detail = str(c["detail"]).replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {c['name']} | {'OK' if c['ok'] else '**FAIL**'} | {c['seconds']:.1f} | {detail} |")
    if r.get("speed"):
        lines += ["", "Training step, hvdgan's GAN step against a plain PyTorch loop of the same DCGAN-64 with the "
                  "same precision settings (bf16 autocast, channels_last, fused Adam), side by side, one GPU:", "",
                  "| per-GPU batch | plain loop images/s | hvdgan images/s | hvdgan / plain | targets |",
                  "|---:|---:|---:|---:|---|"]
        for s in r["speed"]:
            targets = s.get("targets")
            verdict = ("; ".join(f"{k}: {'met' if ok else 'MISSED'}" for k, ok in targets.items())
                       if targets else "n/a (CPU dry run)")
            lines.append(f"| {s['batch']} | {_fmt(s['plain_images_per_s'])} | {_fmt(s['hvdgan_images_per_s'])} | "
                         f"{s['ratio']:.3f} | {verdict} |")
    p = r.get("placements")
    if p:
        base = next(iter(p["timing"]))
        lines += ["", f"Placements (benchmarks/bench_placement.py, batch {p['args'].get('batch_size')}), timed "
                  f"side by side and checked in float32 against {base}:", "",
                  f"| placement | ms/step | images/s | x {base} | check |", "|---|---:|---:|---:|---|"]
        for name, t in p["timing"].items():
            c = p["check"].get(name)
            check = "(reference)" if c is None else (
                f"{'OK' if c['ok'] else '**MISMATCH**'} (step-1 losses {c['loss_rel_diff']:.0e}, later "
                f"{c.get('later_loss_rel_diff', 0):.0e}; params {c['param_rel_diff']:.1e} of movement)")
            lines.append(f"| {name} | {t['ms_per_step']:.2f} | {_fmt(t['images_per_s'])} | "
                         f"{t['x_baseline']:.2f}x | {check} |")
    pr = r.get("precision")
    if pr:
        lines += ["", f"bf16 + channels_last against float32, {pr['steps']} steps at batch {pr['batch']} from the "
                  f"same weights, data and noise: step-1 losses differ by {pr['step1_loss_rel_diff']:.1e} (rel.), "
                  f"the last quarter's mean D outputs by {pr['late_d_outputs_abs_diff']:.3f} (abs.), its mean "
                  f"losses by {pr['late_losses_rel_diff']:.3f} (rel.; reported, not checked: a loss near 0 makes any "
                  f"relative difference large); "
                  f"{'all finite' if pr['finite'] else 'NaN/inf seen'}."]
    for note in r.get("notes", []):
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/gpu_report.py gpu-check.json")
    sys.stdout.write(render_markdown(json.loads(Path(sys.argv[1]).read_text())))
