"""Checkerboard, Lagrangian self-distillation (LSD), teacher stop-gradient, as published."""

from flow_maps import config_defaults


def get_config(variant=None):
  return config_defaults.with_preset(config_defaults.checkerboard(variant), "lsd")
