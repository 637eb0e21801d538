"""Figures and a table of the d-dimensional mixture sweep (`experiments/sweeps/mixture_nd.py`,
`docs/mixture_nd.md`): flow-map error and W2 at N steps against the dimension and against the
measured Lipschitz constant of the exact velocity, per objective.

  python experiments/mixture_figures.py experiments/sweeps/mixture_nd.py:seeds --root=runs/mixture_nd

Writes into --out (default: the root) mixture_nd.csv (one row per objective, dimension and knob:
mean and std over seeds, with the last logged diagonal and off-diagonal training residuals),
mixture_nd_vs_dim.png and mixture_nd_vs_lipschitz.png. The map's numbers are the N-step flow
map's; flow matching's are its ODE sampler's at N steps (Euler in the sweep's configs: N network
calls, like the map). Members without an evaluation are listed and left out.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flow_maps import sweeps  # noqa: E402  (after the path set-up, for runs from a checkout)

KEYS = ("objective", "sampler", "dim", "separation", "component_std")
LIPSCHITZ = ("sup", "exact", "model")


OFF_DIAGONAL = ("lagrangian", "eulerian", "progressive")  # the logged off-diagonal residuals


def final_losses(workdir: str) -> dict[str, float]:
  """The last logged training line's diagonal and off-diagonal residuals (NaN where absent: flow
  matching has no off-diagonal rows), the residual the paper's bound is stated in."""
  last = None
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        if line.strip():
          last = json.loads(line)
  last = last or {}
  off = [last[k] for k in OFF_DIAGONAL if k in last]
  return {"loss_diagonal": float(last.get("diagonal", float("nan"))),
          "loss_off_diagonal": float(off[0]) if off else float("nan")}


def member_row(member: sweeps.Member, root: str, steps) -> dict | None:
  """One member's numbers, or None if it has no evaluation (or no config.json) yet."""
  workdir = member.workdir(root)
  result = sweeps.latest_eval(workdir)
  config = sweeps.read_json(os.path.join(workdir, "config.json"))
  if result is None or config is None or "w2" not in result:
    return None
  objective = os.path.basename(member.config)[len("mixture_nd_"):-len(".py")]
  ode = objective == "flow_matching"  # its map is untrained off the diagonal: use its sampler
  prefix = "ode_" if ode else ""
  row = {"objective": objective, "sampler": result["ode_sampler"] if ode else "map",
         "dim": config["data"]["dim"], "separation": config["data"]["separation"],
         "component_std": config["data"]["component_std"], "seed": config["seed"],
         "w2_floor": result["w2_floor"], **final_losses(workdir)}
  for name in LIPSCHITZ:
    row[f"lipschitz_{name}"] = result["lipschitz"].get(name, float("nan"))
  for n in steps:
    row[f"error_{n}"] = result[prefix + "flow_map_error"].get(str(n), float("nan"))
    row[f"w2_{n}"] = result[prefix + "w2"].get(str(n), float("nan"))
  return row


def summarise(rows: list[dict]) -> list[dict]:
  """Mean (and std, `<metric>_std`) over seeds of every number, per objective, dim and knob."""
  groups: dict[tuple, list[dict]] = {}
  for row in rows:
    groups.setdefault(tuple(row[k] for k in KEYS), []).append(row)
  out = []
  for key, members in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
    summary = dict(zip(KEYS, key), seeds=len(members))
    for name in members[0]:
      if name in KEYS or name == "seed":
        continue
      values = np.asarray([m[name] for m in members], np.float64)
      summary[name] = float(values.mean())
      summary[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
    out.append(summary)
  return out


def write_csv(summary: list[dict], path: str) -> None:
  columns = list(summary[0])
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    for row in summary:
      writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def plot(summary: list[dict], x_name: str, line_key: str, steps, path: str, x_label: str,
         log2_x: bool) -> None:
  """Panels (flow-map error, W2) x N; one line per objective and `line_key` value, against
  `x_name`; error bars are the std over seeds where there are several. W2 panels against d
  show the estimator's floor (two exact sample sets) dotted."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.ticker import NullFormatter

  metrics = (("error", "flow-map error  E|X^N - X_ref|^2"), ("w2", "W2 to data"))
  fig = Figure(figsize=(3.6 * len(steps), 3.2 * len(metrics)))
  FigureCanvasAgg(fig)
  lines: dict[tuple, list[dict]] = {}
  for row in summary:
    lines.setdefault((row["objective"], row["sampler"], row[line_key]), []).append(row)
  for i, (metric, title) in enumerate(metrics):
    for j, n in enumerate(steps):
      ax = fig.add_subplot(len(metrics), len(steps), i * len(steps) + j + 1)
      for (objective, sampler, value), rows in sorted(lines.items(), key=lambda kv: str(kv[0])):
        rows = sorted(rows, key=lambda r: r[x_name])
        x = [r[x_name] for r in rows]
        y = [r[f"{metric}_{n}"] for r in rows]
        err = [r.get(f"{metric}_{n}_std", float("nan")) for r in rows]
        label = f"{objective}{'' if sampler == 'map' else ' (' + sampler + ')'}, " \
                f"{line_key} {value:g}"
        ax.errorbar(x, y, yerr=None if np.all(np.isnan(err)) else err, marker="o", ms=3,
                    label=label, capsize=2)
      if metric == "w2" and x_name == "dim":  # the floor depends on d (and n) only
        floor = {r["dim"]: r["w2_floor"] for r in summary}
        ax.plot(sorted(floor), [floor[d] for d in sorted(floor)], "x:", color="grey",
                label="W2 floor (two exact sample sets)")
      ax.set_xscale("log", base=2 if log2_x else 10)
      ax.set_yscale("log")
      ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on short ranges
      ax.set_title(f"{title}, N = {n}", fontsize=8)
      ax.set_xlabel(x_label, fontsize=8)
      ax.tick_params(labelsize=7)
      if j == 0:
        ax.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("sweep", help="sweep file, optionally with :arg")
  parser.add_argument("--root", required=True, help="the sweep's root")
  parser.add_argument("--out", default=None, help="output directory (default: the root)")
  parser.add_argument("--steps", default="1,4,16", help="step counts to plot (all go in the CSV)")
  args = parser.parse_args(argv)
  sweep = sweeps.load_sweep(args.sweep)
  out = args.out or args.root
  os.makedirs(out, exist_ok=True)
  all_steps = (1, 2, 4, 8, 16)
  rows = []
  for member in sweep.expand():
    row = member_row(member, os.path.abspath(args.root), all_steps)
    if row is None:
      print(f"member {member.index} ({member.name}): not evaluated, left out")
    else:
      rows.append(row)
  if not rows:
    print(f"no evaluated member under {args.root}", file=sys.stderr)
    return 2
  summary = summarise(rows)
  write_csv(summary, os.path.join(out, "mixture_nd.csv"))
  steps = [int(n) for n in args.steps.split(",")]
  plot(summary, "dim", "separation", steps, os.path.join(out, "mixture_nd_vs_dim.png"),
       "dimension d", log2_x=True)
  plot(summary, "lipschitz_exact", "dim", steps,
       os.path.join(out, "mixture_nd_vs_lipschitz.png"),
       "measured Lipschitz constant of b (exact velocity)", log2_x=False)
  print(f"{len(rows)} member(s) -> {os.path.join(out, 'mixture_nd.csv')}, "
        f"mixture_nd_vs_dim.png, mixture_nd_vs_lipschitz.png")
  return 0


if __name__ == "__main__":
  sys.exit(main())
