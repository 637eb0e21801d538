"""Quality against compute: a sweep's evaluations during training as curves of KL, flow-map error
or FID per N against optimiser steps, examples seen, training wall-clock seconds and XLA-counted
training FLOPs, mean ± std over seeds, as PNG figures and a CSV (`docs/curves.md`).

The runs evaluate at log-spaced steps while they train (`train.eval_schedule='log'`,
`train.eval_points`, `train.eval_num_samples`); each evaluation's line of DIR/eval/metrics.jsonl
holds its scalars and the compute that led to it (`train.compute_record`). Members are grouped by
every override the sweep varies except the seed, so any set of objectives or presets (or
learning rates, batch sizes, ...) becomes one curve each:

  python experiments/sweep.py experiments/sweeps/checkerboard_curves.py --root=runs/curves run-all
  python experiments/curves.py experiments/sweeps/checkerboard_curves.py --root=runs/curves

writes ROOT/curves/curves.csv and ROOT/curves/<metric>.png (one row of panels per N, one column
per axis). Evaluations without a compute record (a --mode=eval, train_and_eval's final one) are
left out; if a run evaluated with several weights or sample counts, the pair with the most points
is used, and the CSV says which.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flow_maps import sweeps  # noqa: E402  (after the path set-up, for runs from a checkout)
from flow_maps.evaluation import results  # noqa: E402

AXES = {"step": "optimiser steps", "examples": "examples seen",
        "train_seconds": "training wall-clock (s)", "train_flops": "training FLOPs (XLA count)"}
METRICS = {"kl": "KL(data || model)", "flow_map_error": "flow-map error", "fid": "FID"}
SEED_KEY = "seed"


def group_name(member: sweeps.Member, varying: set[str]) -> str:
  """The member's name without the seed: the overrides the sweep varies, seed excepted."""
  keys = {sweeps.CONFIG_KEY: member.config, **member.overrides}
  return sweeps.member_name({k: v for k, v in keys.items() if k in varying and k != SEED_KEY}
                            ) or "base"


def member_points(workdir: str) -> tuple[list[dict], str]:
  """The evaluations with a compute record of one run, in step order, and which weights and
  sample count they are ("<params> n<num_samples>")."""
  records = [r for r in results.read_metrics(os.path.join(workdir, "eval")) if r.get("compute")]
  by_kind: dict[tuple, list[dict]] = {}
  for r in records:
    by_kind.setdefault((r.get("params"), r.get("num_samples")), []).append(r)
  if not by_kind:
    return [], ""
  (params, count), chosen = max(by_kind.items(), key=lambda item: len(item[1]))
  return chosen, f"{params} n{count}"


def collect(sweep: sweeps.Sweep, root: str) -> tuple[dict[str, list[list[dict]]], dict, list]:
  """{group: [points of each seed's run]}, {group: evaluation kind}, problems (one line each)."""
  members = sweep.expand()
  declared = [{sweeps.CONFIG_KEY: m.config, **m.overrides} for m in members]
  varying = sweeps.varying_keys(declared)
  groups: dict[str, list[list[dict]]] = {}
  kinds: dict[str, set[str]] = {}
  problems = []
  for m in members:
    name = group_name(m, varying)
    points, kind = member_points(m.workdir(root))
    groups.setdefault(name, [])
    if not points:
      problems.append(f"member {m.index} ({m.name}): no evaluation with a compute record in "
                      f"{m.workdir(root)}/eval/metrics.jsonl (train.eval_schedule='log'?)")
      continue
    groups[name].append(points)
    kinds.setdefault(name, set()).add(kind)
  return groups, {k: ", ".join(sorted(v)) for k, v in kinds.items()}, problems


def curve(runs: list[list[dict]], metric: str, n: str, axis: str) -> list[dict]:
  """Mean ± std over the runs at each step every run evaluated: x (the axis) and y (the metric
  at N steps). std is the sample standard deviation (0 with one run)."""
  key = f"{metric}_n{n}"
  steps = sorted(set.intersection(*[{p["step"] for p in run if key in p} for run in runs])
                 ) if runs else []
  out = []
  for step in steps:
    rows = [next(p for p in run if p["step"] == step) for run in runs]
    xs = [r["compute"].get(axis) if axis != "step" else r["step"] for r in rows]
    if any(x is None for x in xs):
      continue
    ys = np.asarray([r[key] for r in rows], np.float64)
    xs = np.asarray(xs, np.float64)
    ddof = 1 if len(rows) > 1 else 0
    out.append({"step": step, "seeds": len(rows), "x_mean": float(xs.mean()),
                "x_std": float(xs.std(ddof=ddof)), "y_mean": float(ys.mean()),
                "y_std": float(ys.std(ddof=ddof))})
  return out


def step_counts(groups: dict[str, list[list[dict]]], metric: str) -> list[str]:
  prefix = f"{metric}_n"
  found = {k[len(prefix):] for runs in groups.values() for run in runs for p in run
           for k in p if k.startswith(prefix) and k[len(prefix):].isdigit()}
  return sorted(found, key=int)


def write_csv(path: str, groups, kinds, metrics, steps_wanted) -> int:
  rows = 0
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["group", "evaluation", "metric", "N", "axis", "step", "seeds", "x_mean", "x_std",
                "y_mean", "y_std"])
    for metric in metrics:
      for n in steps_wanted or step_counts(groups, metric):
        for axis in AXES:
          for name, runs in groups.items():
            for p in curve(runs, metric, n, axis):
              w.writerow([name, kinds.get(name, ""), metric, n, axis, p["step"], p["seeds"],
                          f"{p['x_mean']:.6g}", f"{p['x_std']:.6g}", f"{p['y_mean']:.6g}",
                          f"{p['y_std']:.6g}"])
              rows += 1
  return rows


def plot(path: str, groups, metric: str, steps: list[str], title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(len(steps), len(AXES), figsize=(4 * len(AXES), 3 * len(steps)),
                           squeeze=False)
  for i, n in enumerate(steps):
    for j, axis in enumerate(AXES):
      ax = axes[i][j]
      for name, runs in groups.items():
        points = curve(runs, metric, n, axis)
        if not points:
          continue
        x = np.asarray([p["x_mean"] for p in points])
        y = np.asarray([p["y_mean"] for p in points])
        s = np.asarray([p["y_std"] for p in points])
        line, = ax.plot(x, y, marker="o", markersize=3, label=f"{name} ({len(runs)})")
        ax.fill_between(x, y - s, y + s, color=line.get_color(), alpha=0.2)
      ax.set_xscale("log")
      ax.set_yscale("log")
      ax.set_xlabel(AXES[axis])
      ax.set_ylabel(f"{METRICS.get(metric, metric)}, N = {n}")
      ax.grid(True, which="both", alpha=0.3)
  handles, labels = axes[0][0].get_legend_handles_labels()
  if handles:
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 5), fontsize=8,
               bbox_to_anchor=(0.5, 1.0))
  fig.suptitle(title, y=1.04)
  fig.tight_layout()
  fig.savefig(path, dpi=90, bbox_inches="tight")
  plt.close(fig)


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("sweep", help="sweep file, optionally with :arg (as experiments/sweep.py)")
  parser.add_argument("--root", default=None, help="sweep root (default: runs/<sweep name>)")
  parser.add_argument("--out", default=None, help="output directory (default: ROOT/curves)")
  parser.add_argument("--metrics", default="kl,flow_map_error,fid",
                      help="comma-separated: kl, flow_map_error, fid (those present are drawn)")
  parser.add_argument("--steps", default="", help="comma-separated N (default: every N found)")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = _parse(argv)
  sweep = sweeps.load_sweep(args.sweep)
  root = os.path.abspath(args.root or os.path.join(sweeps.PROJECT_ROOT, "runs", sweep.name))
  out = args.out or os.path.join(root, "curves")
  groups, kinds, problems = collect(sweep, root)
  for p in problems:
    print(p, file=sys.stderr)
  groups = {k: v for k, v in groups.items() if v}
  if not groups:
    print(f"no run of {sweep.name} under {root} has evaluations during training",
          file=sys.stderr)
    return 2
  wanted = [s for s in args.steps.split(",") if s]
  metrics = [m for m in args.metrics.split(",") if m and step_counts(groups, m)]
  os.makedirs(out, exist_ok=True)
  rows = write_csv(os.path.join(out, "curves.csv"), groups, kinds, metrics, wanted)
  for metric in metrics:
    steps = wanted or step_counts(groups, metric)
    path = os.path.join(out, f"{metric}.png")
    plot(path, groups, metric, steps, f"{sweep.name}: {METRICS.get(metric, metric)}, mean ± std "
         "over seeds")
    print(f"wrote {path}")
  print(f"wrote {os.path.join(out, 'curves.csv')} ({rows} rows; groups: {', '.join(groups)})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
