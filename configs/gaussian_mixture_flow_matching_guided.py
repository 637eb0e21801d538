"""Labelled eight-Gaussian ring (std 0.25, `config_defaults.wide_gaussian_mixture`),
class-conditional flow matching with label dropout: the classic classifier-free-guidance model,
evaluated with the guided ODE at each w, and the conditional teacher of
`gaussian_mixture_lmd_guided.py` (`docs/method.md` §9).
Also `configs/gaussian_mixture.py:preset=flow_matching,guidance=labels`.
"""

from flow_maps import config_defaults as cd


def get_config(variant=None):
  return cd.with_labels(cd.with_preset(cd.wide_gaussian_mixture(variant), "flow_matching"))
