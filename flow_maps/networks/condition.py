"""The check every conditional network makes of its inputs; a module of its own so that the
networks import it without importing their package (which imports them: a cycle)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn


def check_condition(module: nn.Module, label: Any, guidance: Any) -> None:
  """A conditional module takes a label exactly when it has classes, and a guidance scale
  exactly when it learns guidance (`flow_map.Condition`)."""
  if (label is not None) != bool(module.num_classes):
    raise ValueError(f"this network takes a label exactly when conditional (num_classes="
                     f"{module.num_classes}); got label={'none' if label is None else 'one'}")
  if (guidance is not None) != module.learn_guidance:
    raise ValueError(f"this network takes a guidance scale exactly when it learns guidance "
                     f"(learn_guidance={module.learn_guidance})")
