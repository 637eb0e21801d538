"""experiments/benchmark.py: the per-sample vmap reference computes our loss, the objectives cost
no more network passes than their algorithmic floor (XLA's FLOP count: independent of the
machine's load), and the script runs end to end."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import jax
import pytest

from flow_maps import config_defaults

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("benchmark",
                                               os.path.join(ROOT, "experiments", "benchmark.py"))
benchmark = importlib.util.module_from_spec(_spec)
sys.modules["benchmark"] = benchmark  # dataclasses look their module up while it executes
_spec.loader.exec_module(benchmark)


def _config(variant, batch=64, width=32, depth=2, stop_gradient=None):
  overrides = {"stop_gradient": stop_gradient} if stop_gradient else {}
  return benchmark.variant_config(config_defaults.checkerboard("smoke"), variant, batch, width,
                                  depth, **overrides)


@pytest.mark.parametrize("variant", benchmark.VMAP_VARIANTS)
def test_vmap_reference_is_our_loss(variant):
  """Same draws, same value: the reference times the same computation."""
  assert benchmark.loss_agreement(_config(variant), 64) < 1e-5


# Network passes per off-diagonal row (a pass: one forward of the network on one row; a
# flow-matching row costs 3: forward and backward). The floors: LSD 1 primal + 1 tangent
# + 1 teacher + 4 backward = 7; PSD 2 teacher + 3 student = 5; ESD "full" adds the x-tangent to
# LSD's count, 8; ESD "teacher" folds both derivatives into one jvp, 7. The "derivatives"
# placement differentiates the primal only: 1 primal + 1 tangent + 2 backward = 4 (MeanFlow,
# sCM), 5 with a pretrained velocity (consistency distillation); iCT 3 student + 1 teacher = 4.
# Distillation adds the pretrained velocity on every diagonal row, 1 pass there, counted here
# as (eta / (1 - eta)) = 3 per off-diagonal row at eta = 0.75: LMD 7 + 3, EMD 8 + 3, PMD 5 + 3.
# Learned guidance adds two teacher passes (label and null) on its guided half of the diagonal
# rows: 3 x 2 x 0.5 = 3 per off-diagonal row, LSD 7 + 3.
# PSD-U and shortcut are left out: the same progressive residual and stop-gradient as PSD-M, so
# the same passes by construction (5.01 and 5.05 measured, `docs/benchmarks.md`).
FLOORS = [("lsd", None, 7), ("psd_m", None, 5), ("esd", None, 8), ("esd", "teacher", 7),
          ("meanflow", None, 4), ("consistency_training", None, 4),
          ("consistency_training_discrete", None, 4), ("consistency_distillation", None, 5),
          ("lmd", None, 10), ("emd", None, 11), ("pmd", None, 8), ("lsd_guided", None, 10)]


def test_objectives_cost_no_more_passes_than_their_floor():
  """From the FLOPs of each step as lowered: no compilation (a third of the CPU time per step),
  and the program we emit rather than what XLA makes of it; the two counts differ by at most
  0.12 passes per off-diagonal row here (`benchmark.lowered_flops`), inside the 0.3 margin."""
  width, batch = 256, 512  # matmuls dominate the count (not elementwise or optimiser work)
  fm = benchmark.lowered_flops(_config("flow_matching", batch, width))
  forward = benchmark.forward_flops(_config("flow_matching", batch, width), batch)
  assert 2.9 < fm / forward < 3.2
  for variant, placement, floor in FLOORS:
    config = _config(variant, batch, width, stop_gradient=placement)
    eta = config.objective.diagonal_fraction
    passes = (benchmark.lowered_flops(config) - eta * fm) / ((1 - eta) * forward)
    # sCM's learned weight head (a small MLP on the times) adds ~0.1 pass at this width.
    assert passes < floor + 0.3, (variant, placement, passes)


@pytest.mark.slow
def test_cli_end_to_end(tmp_path):
  out = tmp_path / "bench.json"
  benchmark.main(["--batch=64", "--width=16", "--depth=1", "--repeats=2", "--steps-per-run=1",
                  "--warmup=1", "--objectives=flow_matching,psd_m", "--sample-batch=32",
                  "--map-steps=1,2", "--ode-steps=2", f"--out={out}"])
  result = json.loads(out.read_text())
  assert set(result["train_step"]) == {"flow_matching", "psd_m"}
  fm, psd = result["train_step"]["flow_matching"], result["train_step"]["psd_m"]
  assert fm["ratio"] == 1.0 and fm["flop_ratio"] == 1.0
  assert psd["flop_ratio"] > 1.0 and psd["ms"] > 0 and psd["vmap_ms"] > 0
  assert len(psd["runs_ms"]) == 2
  assert [(r["sampler"], r["network_evals"]) for r in result["sampling"]] == [
      ("flow map", 1), ("flow map", 2), ("Heun ODE", 4)]
  assert "| psd_m |" in result["table"]
  assert result["machine"]["load_before"] and jax.__version__ == result["machine"]["jax"]


def test_input_benchmark_smoke(tmp_path, offline):
  """`--input` on stand-in tfds data of the real shapes, written here (no download)."""
  pytest.importorskip("tensorflow_datasets")
  out = tmp_path / "input.json"
  benchmark.main(["--input", "--stand-in-examples=6", "--input-batch=4", "--input-batches=1",
                  "--workers=0", "--step-times=0.5", f"--out={out}"])
  result = json.loads(out.read_text())
  assert [(r["dataset"], r["workers"], r["examples"]) for r in result["rows"]] == [
      ("cifar10", 0, 6), ("celeba64", 0, 6)]
  assert all(r["images_per_sec"] > 0 and r["main_cpu_ms_per_image"] >= 0
             for r in result["rows"])
  assert result["needed_images_per_sec"] == {"0.5": 1024.0} and result["stand_in"]
  assert "| celeba64 | 0 |" in result["table"]


def test_unet_preset_benchmark_at_tiny_size(tmp_path):
  """`--model=unet --preset=...`, the tiny architecture at CIFAR-10's shape: one objective in
  bfloat16 (the float32 step is the one every other benchmark compiles)."""
  out = tmp_path / "unet.json"
  benchmark.main(["--model=unet", "--preset=cifar10", "--tiny", "--xla-opt-level=0", "--batch=4",
                  "--objectives=flow_matching", "--dtypes=bfloat16", "--repeats=1",
                  "--steps-per-run=1", "--warmup=1", f"--out={out}"])
  result = json.loads(out.read_text())
  (row,) = result["rows"]
  assert (row["objective"], row["dtype"], row["batch"]) == ("flow_matching", "bfloat16", 4)
  assert row["ms"] > 0 and row["compile_s"] > 0 and row["gflop"] > 0
  assert row["images_per_sec"] == pytest.approx(4 / (row["ms"] / 1e3))
  assert row["peak_source"] in ("host RSS",) or row["peak_source"].startswith("device")
  assert result["architecture"] == "tiny" and "| flow_matching | bfloat16 |" in result["table"]
