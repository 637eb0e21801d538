"""`flow_maps/data/sources.py`: the one data interface of the train step. Toy data takes the
empty host batch and is drawn in the step from its key, exactly as the dataset draws it; image
batches are the dataset's rows of the step, laid out as the step was compiled for. No step is
compiled here (the bitwise runs are in tests/test_train.py and tests/test_resume*.py)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from flow_maps import config_defaults, train
from flow_maps import data as data_lib


def _source(config):
  return data_lib.batch_source(config, NamedSharding(train.make_mesh(), P("data")))


@pytest.mark.parametrize("conditional", [False, True])
def test_toy_source_takes_no_host_batch_and_draws_as_the_dataset(conditional):
  config = config_defaults.checkerboard("smoke")
  config.data.conditional = conditional
  source = _source(config)
  assert source.abstract_batch() == ()
  batches = source.batches(7)
  assert [next(batches) for _ in range(3)] == [(), (), ()]
  batches.close()
  key = jax.random.PRNGKey(3)
  x, labels = jax.jit(source.draw)(key, ())
  dataset, b = data_lib.toy_dataset(config), config.train.batch_size
  np.testing.assert_array_equal(x, dataset.sample(key, b))
  if conditional:
    np.testing.assert_array_equal(labels, dataset.sample_labelled(key, b)[1])
  else:
    assert labels is None


@pytest.mark.parametrize("conditional", [False, True])
def test_image_source_batches_are_the_steps_rows_in_the_compiled_layout(conditional, offline):
  config = config_defaults.digits("smoke")
  config.data.conditional = conditional
  source = _source(config)
  spec = source.abstract_batch()
  batches = source.batches(2)  # a resumed run: from step 2
  got = [next(batches) for _ in range(2)]
  batches.close()
  dataset, b = data_lib.image_dataset(config), config.train.batch_size
  for step, batch in zip((2, 3), got):
    want = dataset.batch(step, b, with_labels=conditional)
    for g, s, w in zip(*((x if conditional else (x,)) for x in (batch, spec, want))):
      assert (g.shape, g.dtype, g.sharding) == (s.shape, s.dtype, s.sharding)
      np.testing.assert_array_equal(np.asarray(g), w)
    x, labels = source.draw(None, batch)
    assert x is (batch[0] if conditional else batch)
    assert labels is (batch[1] if conditional else None)
