"""Labelled eight-Gaussian ring (std 0.25), Lagrangian map distillation of a conditional teacher
with classifier-free guidance learned into the map (`docs/method.md` §9): every teacher slot takes
the teacher's guided velocity b(.|null) + w (b(.|c) - b(.|null)) at the row's label and w in
[0, 4], so one call per step samples the guided map at any w of that range. The teacher is a
finished conditional run on the same data, e.g. `gaussian_mixture_flow_matching_guided.py`:
--config.objective.pretrained=DIR.
Also `configs/gaussian_mixture.py:preset=lmd,guidance=learned`.
"""

from flow_maps import config_defaults as cd


def get_config(variant=None):
  return cd.with_learned_guidance(cd.with_preset(cd.wide_gaussian_mixture(variant), "lmd"))
