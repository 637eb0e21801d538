"""Checkerboard, flow matching only (every row on the diagonal): the baseline, sampled with the ODE
on b_t = v_{t,t}. Its flow-map rows (N-step map) are reported too, to show what the map lacks
without self-distillation."""

from flow_maps import config_defaults


def get_config(variant=None):
  config = config_defaults.checkerboard(variant)
  config.objective.name = "flow_matching"
  config.objective.diagonal_fraction = 1.0
  return config
