"""The search for the demo's recipe (`docs/recipe.md`): checkerboard LSD at the demo's budget,
one change at a time against the demo as it was, then the chosen recipe over seeds at the demo's
budget (about 5 minutes here) and at about 8 minutes.

Every member pins every setting it depends on, so the stages stay what they were when the
defaults move. The argument picks the stage:

  before   the demo as it was (RAdam 2e-3, constant then 1/sqrt from step 7,500, EMA 0.999,
           diagonal fraction 0.75, 15k steps of batch 1024), seeds 0, 1, 2
  screen   one change at a time to it, seed 0
  after    the chosen recipe at the demo's budget, seeds 0, 1, 2
  long     the chosen recipe at twice the steps (30k, about 8 minutes), seeds 0, 1, 2

  python experiments/sweep.py experiments/sweeps/recipe.py:screen --root=runs/recipe_screen run-all
"""

from flow_maps import sweeps

SEEDS = (0, 1, 2)
# The demo before the search (`configs/checkerboard_lsd.py:demo` until 2026-12-03).
BEFORE = {"model.width": 256, "model.depth": 4, "train.batch_size": 1024,
          "train.num_steps": 15_000, "optim.learning_rate": 2e-3, "optim.schedule": "rsqrt",
          "optim.decay_start": 7_500, "optim.decay_end": 0, "train.ema_decays": (0.999,),
          "eval.params": "ema_0.999", "objective.diagonal_fraction": 0.75}
# One change at a time (each a dict of overrides on BEFORE).
LINEAR = {"optim.schedule": "linear", "optim.decay_end": 15_000}
SCREEN = {
    "linear": LINEAR,
    "linear_diag50": {**LINEAR, "objective.diagonal_fraction": 0.5},
    "linear_lr4e-3": {**LINEAR, "optim.learning_rate": 4e-3},
    "linear_batch512": {"optim.schedule": "linear", "train.num_steps": 24_000,
                        "optim.decay_start": 12_000, "optim.decay_end": 24_000,
                        "train.batch_size": 512},
    "linear_ema9995": {**LINEAR, "train.ema_decays": (0.9995,), "eval.params": "ema_0.9995"},
    "linear_learned": {**LINEAR, "objective.weighting": "learned"},
    "linear_diag25": {**LINEAR, "objective.diagonal_fraction": 0.25},
    "linear_from0": {**LINEAR, "optim.decay_start": 0},
    "linear_uniform_gap": {**LINEAR, "objective.times": "uniform_gap"},
    "linear_anneal": {**LINEAR, "objective.anneal_steps": 3_000},
    # Shortcut models' pairs: every off-diagonal row on a jump the samplers take (N = 1 ... 16).
    "linear_dyadic": {**LINEAR, "objective.times": "dyadic", "objective.dyadic_levels": 5},
    "linear_uniform_gap_diag50": {**LINEAR, "objective.times": "uniform_gap",
                                  "objective.diagonal_fraction": 0.5},
}
# The chosen recipe (now `configs/checkerboard_lsd.py:demo`): the uniform gap law and the linear
# decay to zero over the second half.
AFTER = {**LINEAR, "objective.times": "uniform_gap"}
# The same at twice the steps (about 8 minutes of training here).
LONG = {**AFTER, "train.num_steps": 30_000, "optim.decay_start": 15_000,
        "optim.decay_end": 30_000}


def get_sweep(arg=None):
  stage = arg or "screen"
  if stage == "before":
    members = [{**BEFORE, "seed": s} for s in SEEDS]
  elif stage == "screen":
    members = [{**BEFORE, **change, "seed": 0} for change in SCREEN.values()]
  elif stage in ("after", "long"):
    members = [{**BEFORE, **(AFTER if stage == "after" else LONG), "seed": s} for s in SEEDS]
  else:
    raise ValueError(f"recipe sweep: unknown stage {stage!r}; allowed: before, screen, after, long")
  return sweeps.Sweep(config="configs/checkerboard_lsd.py", variant="demo", members=members,
                      mode="train_and_eval", name=f"recipe_{stage}")
