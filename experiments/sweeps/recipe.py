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
  before_long  the demo as it was at 30k steps (its decay from 15k), seed 0: what the extra
           steps give without the recipe
  screen_after  one change at a time to the chosen recipe, seed 0: more rows on long gaps
           (long_gap) and half the off-diagonal rows inside the steps of the 1-, 2- and
           4-step samplers (segment_fraction 0.5)
  preset_before, preset_screen, preset_after   the same for the best preset at four steps,
           continuous-time consistency training (sCM): the demo budget with the published
           schedule (seeds 0, 1, 2), one change at a time (seed 0), the chosen one (seeds 0, 1, 2)

  python experiments/sweep.py experiments/sweeps/recipe.py:screen --root=runs/recipe_screen run-all
"""

from flow_maps import sweeps

SEEDS = (0, 1, 2)
# The demo before the search (`configs/checkerboard_lsd.py:demo` until 2026-12-03).
BEFORE = {"model.width": 256, "model.depth": 4, "train.batch_size": 1024,
          "train.num_steps": 15_000, "optim.learning_rate": 2e-3, "optim.schedule": "rsqrt",
          "optim.decay_start": 7_500, "optim.decay_end": 0, "train.ema_decays": (0.999,),
          "eval.params": "ema_0.999", "objective.diagonal_fraction": 0.75,
          "objective.times": "triangle"}
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
BEFORE_LONG = {"train.num_steps": 30_000, "optim.decay_start": 15_000}
SCREEN_AFTER = {
    "long_gap": {"objective.times": "long_gap"},
    "segments50": {"objective.segment_fraction": 0.5},
}
# The best preset at four steps in `docs/presets.md` (0.486 at N = 4), on the demo's budget. Its
# own time law (t = 1, log-normal noise level) and no diagonal rows; the schedule and the
# tangent warm-up (10,000 steps, sCM's, in a 15,000-step run) are what the screen moves.
PRESET = "configs/checkerboard_consistency_training.py"
PRESET_BASE = {k: v for k, v in BEFORE.items()  # the preset's own rows and time law
               if k not in ("objective.diagonal_fraction", "objective.times")}
PRESET_SCREEN = {
    "linear": LINEAR,
    "linear_warmup3750": {**LINEAR, "objective.tangent_warmup_steps": 3_750},
}
PRESET_AFTER = PRESET_SCREEN["linear"]
STAGES = ("before", "screen", "after", "long", "before_long", "screen_after", "preset_before",
          "preset_screen", "preset_after")


def get_sweep(arg=None):
  stage = arg or "screen"
  if stage == "before":
    members = [{**BEFORE, "seed": s} for s in SEEDS]
  elif stage == "screen":
    members = [{**BEFORE, **change, "seed": 0} for change in SCREEN.values()]
  elif stage in ("after", "long"):
    members = [{**BEFORE, **(AFTER if stage == "after" else LONG), "seed": s} for s in SEEDS]
  elif stage == "before_long":
    members = [{**BEFORE, **BEFORE_LONG, "seed": 0}]
  elif stage == "screen_after":
    members = [{**BEFORE, **AFTER, **change, "seed": 0} for change in SCREEN_AFTER.values()]
  elif stage in ("preset_before", "preset_after"):
    change = PRESET_AFTER if stage == "preset_after" else {}
    members = [{"config": PRESET, **PRESET_BASE, **change, "seed": s} for s in SEEDS]
  elif stage == "preset_screen":
    members = [{"config": PRESET, **PRESET_BASE, **change, "seed": 0}
               for change in PRESET_SCREEN.values()]
  else:
    raise ValueError(f"recipe sweep: unknown stage {stage!r}; allowed: {', '.join(STAGES)}")
  return sweeps.Sweep(config="configs/checkerboard_lsd.py", variant="demo", members=members,
                      mode="train_and_eval", name=f"recipe_{stage}")
