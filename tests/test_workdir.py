"""The resume config check (`workdir.check_resume`), in process: what is refused, what is
accepted and how it is recorded."""
from __future__ import annotations

import json
import os

import pytest

from flow_maps import config_defaults, workdir
from flow_maps.validation import ConfigError


def _store(tmp_path, config):
  data = workdir.config_as_json(config)
  (tmp_path / workdir.CONFIG_FILE).write_text(json.dumps(data))
  return data


def _config():
  from configs import checkerboard_lsd
  return checkerboard_lsd.get_config()


def test_a_field_added_since_at_its_default_is_accepted_and_recorded(tmp_path):
  config = _config()
  stored = _store(tmp_path, config)
  del stored["objective"]["dropout"]          # the run started before the field existed
  (tmp_path / workdir.CONFIG_FILE).write_text(json.dumps(stored))
  assert config.objective.dropout == config_defaults.common().objective.dropout
  changes = workdir.check_resume(str(tmp_path), config, ())
  assert [c.field for c in changes] == ["objective.dropout"]
  workdir.record_config_changes(str(tmp_path), 7, changes)
  (record,) = [json.loads(l) for l in (tmp_path / workdir.CHANGES_FILE).read_text().splitlines()]
  assert (record["step"], record["field"], record["kind"]) == (7, "objective.dropout", "added")


def test_a_field_added_since_at_another_value_is_refused(tmp_path):
  config = _config()
  stored = _store(tmp_path, config)
  del stored["objective"]["dropout"]
  (tmp_path / workdir.CONFIG_FILE).write_text(json.dumps(stored))
  config.objective.dropout = "all"
  with pytest.raises(ConfigError, match=r"objective.dropout '<absent>' -> 'all'; pass "
                     r"--allow_config_change=objective.dropout"):
    workdir.check_resume(str(tmp_path), config, ())
  changes = workdir.check_resume(str(tmp_path), config, ("objective.dropout",))
  workdir.record_config_changes(str(tmp_path), 3, changes)
  (record,) = [json.loads(l) for l in (tmp_path / workdir.CHANGES_FILE).read_text().splitlines()]
  assert record["kind"] == "allowed"


def test_a_changed_meaning_is_refused_and_a_length_change_is_not(tmp_path):
  config = _config()
  _store(tmp_path, config)
  config.train.num_steps += 10
  assert [c.field for c in workdir.check_resume(str(tmp_path), config, ())] == ["train.num_steps"]
  config.objective.stop_gradient = "none"
  with pytest.raises(ConfigError, match="objective.stop_gradient"):
    workdir.check_resume(str(tmp_path), config, ())


def test_a_field_removed_since_is_refused(tmp_path):
  config = _config()
  stored = _store(tmp_path, config)
  stored["objective"]["old_knob"] = 1
  (tmp_path / workdir.CONFIG_FILE).write_text(json.dumps(stored))
  with pytest.raises(ConfigError, match=r"objective.old_knob 1 -> '<absent>'"):
    workdir.check_resume(str(tmp_path), config, ())


def test_a_run_written_under_the_old_sampling_step_names_reads_under_the_new(tmp_path):
  """eval.steps / sample.steps became eval.sampling_steps / sample.sampling_steps: a stored
  config with the old names compares equal to today's (no change), and a different stored
  value is still a change, named by the new field."""
  config = _config()
  stored = _store(tmp_path, config)
  stored["eval"]["steps"] = stored["eval"].pop("sampling_steps")
  stored["sample"]["steps"] = stored["sample"].pop("sampling_steps")
  (tmp_path / workdir.CONFIG_FILE).write_text(json.dumps(stored))
  assert workdir.check_resume(str(tmp_path), config, ()) == []
  upgraded = workdir.stored_config(str(tmp_path))
  assert "steps" not in upgraded["eval"] and upgraded["eval"]["sampling_steps"] == [1, 2, 4, 8, 16]
  stored["eval"]["steps"] = [1, 4]
  (tmp_path / workdir.CONFIG_FILE).write_text(json.dumps(stored))
  (change,) = workdir.check_resume(str(tmp_path), config, ())
  assert (change.field, change.old) == ("eval.sampling_steps", [1, 4])
