"""Checkerboard, Lagrangian self-distillation (LSD), as published (`method.md` §5)."""

from flow_maps import config_defaults


def get_config(variant=None):
  config = config_defaults.checkerboard(variant)
  config.objective.name = "lsd"
  config.objective.stop_gradient = "teacher"
  return config
