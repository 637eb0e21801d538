"""experiments/presets_table.py: mean ± std over seeds per preset from a sweep's results.csv."""

import csv
import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "presets_table", os.path.join(ROOT, "experiments", "presets_table.py"))
presets_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(presets_table)


def test_table_groups_seeds_and_skips_unfinished(tmp_path, capsys):
  rows = []
  for preset, kls in (("lsd", (0.2, 0.4)), ("meanflow", (1.0, 1.0))):
    for seed, kl in enumerate(kls):
      row = {"status": "done", "config": f"configs/checkerboard_{preset}.py:demo",
             "kl_noise_floor": "0.06", "ode_kl/16": "0.5"}
      for n in presets_table.STEPS:
        row[f"kl/{n}"] = str(kl * int(n))
        row[f"flow_map_error/{n}"] = "0.001"
      rows.append(row)
  rows.append({"status": "failed (1)", "config": "configs/checkerboard_esd.py:demo"})
  path = tmp_path / "results.csv"
  with open(path, "w", newline="") as f:
    columns = sorted({k for r in rows for k in r})
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    writer.writerows(rows)
  bench = tmp_path / "bench.json"
  bench.write_text(json.dumps({"train_step": {"lsd": {"ratio": 1.4}, "meanflow": {"ratio": 1.1}}}))
  assert presets_table.main([str(path), f"--benchmark={bench}"]) == 0
  out = capsys.readouterr().out
  assert "| lsd | 2 | 0.300 ± 0.141 | 0.600 ± 0.283 |" in out  # mean, sample std of (0.2, 0.4)
  assert "| meanflow | 2 | 1.000 ± 0.000 |" in out and "| 1.10 |" in out
  assert "esd" not in out.split("flow-map error")[0]
  assert presets_table.main([str(tmp_path / "missing.csv")]) == 2
