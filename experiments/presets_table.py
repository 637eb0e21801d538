"""The presets table of `docs/presets.md`: mean ± std over seeds of each preset's KL and
flow-map error per N, from a sweep's aggregated `results.csv` (`experiments/sweep.py ...
aggregate`), with each preset's train-step time relative to flow matching from a benchmark JSON
(`experiments/benchmark.py --out=...`) when one is given.

  python experiments/presets_table.py runs/presets/results.csv [--benchmark=runs/bench.json]
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import sys

import numpy as np

STEPS = ("1", "2", "4", "8", "16")


def preset_of(config_arg: str) -> str:
  """configs/checkerboard_<preset>.py[:variant] -> <preset>."""
  name = os.path.basename(config_arg.split(":")[0])[:-3]
  return name.split("_", 1)[1]


def group(rows: list[dict]) -> dict[str, list[dict]]:
  out = collections.OrderedDict()
  for row in rows:
    if row.get("status") != "done":
      continue
    out.setdefault(preset_of(row["config"]), []).append(row)
  return out


def _cell(values: list[float], spec: str) -> str:
  if not values:
    return "-"
  if len(values) == 1:
    return format(values[0], spec)
  return f"{format(np.mean(values), spec)} ± {format(np.std(values, ddof=1), spec)}"


def table(groups: dict[str, list[dict]], metric: str, spec: str,
          ratios: dict[str, float] | None = None) -> str:
  head = ["preset", "seeds"] + [f"N = {n}" for n in STEPS]
  if ratios is not None:
    head.append("step × FM")
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for preset, rows in groups.items():
    cells = [preset, str(len(rows))]
    for n in STEPS:
      values = [float(r[f"{metric}/{n}"]) for r in rows if r.get(f"{metric}/{n}")]
      cells.append(_cell(values, spec))
    if ratios is not None:
      r = ratios.get(preset)
      cells.append("-" if r is None else f"{r:.2f}")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("results", help="a sweep's results.csv")
  p.add_argument("--benchmark", default=None, help="benchmark JSON for the step-time column")
  args = p.parse_args(argv)
  if not os.path.isfile(args.results):
    print(f"error: no results file {args.results!r} (run the sweep's aggregate first)",
          file=sys.stderr)
    return 2
  with open(args.results) as f:
    groups = group(list(csv.DictReader(f)))
  ratios = None
  if args.benchmark:
    with open(args.benchmark) as f:
      ratios = {k: v["ratio"] for k, v in json.load(f)["train_step"].items()}
  floors = sorted({float(r["kl_noise_floor"]) for rows in groups.values() for r in rows})
  print("KL(data || model), mean ± std over seeds"
        + (f" (noise floor {floors[0]:.4f} to {floors[-1]:.4f})" if floors else "") + ":\n")
  print(table(groups, "kl", ".3f", ratios))
  print("\nflow-map error E|X_N(x0) - X_ref(x0)|^2, mean ± std over seeds:\n")
  print(table(groups, "flow_map_error", ".2e"))
  ode = {k: [float(r["ode_kl/16"]) for r in rows if r.get("ode_kl/16")]
         for k, rows in groups.items()}
  print("\nHeun, 16 steps on each model's own v_{t,t} (KL): "
        + ", ".join(f"{k} {_cell(v, '.3f')}" for k, v in ode.items() if v))
  return 0


if __name__ == "__main__":
  sys.exit(main())
