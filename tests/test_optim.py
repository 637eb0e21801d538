"""The learning-rate schedules (`flow_maps/optim.py`) and their config checks."""

import math

import pytest

from flow_maps import config_defaults, optim, validation


def _optim(**fields):
  c = config_defaults.common().optim
  c.update(fields)
  return c


def test_rsqrt_is_the_published_schedule():
  f = optim.learning_rate_schedule(_optim(learning_rate=1e-3, decay_start=100))
  assert float(f(0)) == pytest.approx(1e-3) and float(f(100)) == pytest.approx(1e-3)
  assert float(f(400)) == pytest.approx(1e-3 / 2)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_decays_to_zero_at_decay_end(kind):
  f = optim.learning_rate_schedule(
      _optim(learning_rate=2e-3, decay_start=100, schedule=kind, decay_end=300))
  assert float(f(0)) == pytest.approx(2e-3) and float(f(100)) == pytest.approx(2e-3)
  half = 2e-3 * (0.5 if kind == "linear" else 0.5 * (1 + math.cos(math.pi / 2)))
  assert float(f(200)) == pytest.approx(half, rel=1e-6)
  quarter = 2e-3 * (0.75 if kind == "linear" else 0.5 * (1 + math.cos(math.pi / 4)))
  assert float(f(150)) == pytest.approx(quarter, rel=1e-6)
  assert float(f(300)) == 0.0 and float(f(350)) == 0.0


def test_warmup_multiplies_the_decay():
  f = optim.learning_rate_schedule(
      _optim(learning_rate=1e-3, decay_start=0, schedule="linear", decay_end=10, warmup_steps=4))
  assert float(f(0)) == pytest.approx(1e-3 * 1.0 * 0.25)
  assert float(f(5)) == pytest.approx(1e-3 * 0.5)


@pytest.mark.parametrize("fields,needle", [
    ({"optim.schedule": "step"}, "optim.schedule"),
    ({"optim.schedule": "linear", "optim.decay_end": 0}, "optim.decay_end"),
    ({"optim.schedule": "cosine", "optim.decay_start": 50, "optim.decay_end": 50}, "after"),
    ({"optim.schedule": "linear", "optim.decay_start": 0, "optim.decay_end": 10}, "trains past"),
])
def test_bad_schedules_are_named(fields, needle):
  c = config_defaults.checkerboard("smoke")
  for k, v in fields.items():
    section, name = k.split(".")
    c[section][name] = v
  with pytest.raises(validation.ConfigError, match=needle):
    validation.validate(c, num_devices=1)
