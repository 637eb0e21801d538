"""flow_maps: flow maps (consistency models) trained from scratch by self-distillation."""

__version__ = "0.1.0"
