"""Checkerboard, Eulerian self-distillation (ESD), as published: full stop-gradient (`method.md` §3)."""

from flow_maps import config_defaults


def get_config(variant=None):
  config = config_defaults.checkerboard(variant)
  config.objective.name = "esd"
  config.objective.stop_gradient = "full"
  return config
