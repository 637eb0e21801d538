"""Sweeps: a base config, a list of override sets, one workdir per member, one results table.

A sweep file (see `experiments/sweeps/`) defines `get_sweep(arg=None) -> Sweep`. A member is a
dict of config overrides (`{"seed": 1, "objective.psd_h": "midpoint"}`); the reserved key
`"config"` names another config file for that member (`"configs/checkerboard_esd.py"`). Members
are built with `axis`, `zipped` and `product`:

  product(axis("config", [lsd, esd]), axis("seed", [0, 1, 2]))   # 6 members

Member K runs in `<root>/<K>_<name>`, the name made of the overrides that vary across the sweep,
through the same code path as `python -m flow_maps.main --mode=...` (a subprocess: a crash, a
NaN or a preemption of one member never takes the others down). Its output goes to
`<workdir>/log.txt` and its exit status to `<workdir>/status.json`. Members are independent and
restartable: running a member again resumes it from its last checkpoint (training resumes by
itself), and a member already done with the same command is skipped.

`aggregate` reads every member's resolved `config.json` and its latest evaluation
(`eval/step_<step>_<params>_n<num_samples>.json`) into one row per member (`results.csv`, `results.md`), and lists the members that are missing,
running or failed instead of failing.

The three jobs are one module each: `define` (members and the sweep), `runner` (one member in a
subprocess) and `results` (the table). Their public names are re-exported here.
"""

from flow_maps.sweeps.define import (CONFIG_KEY, MODES, Member, Sweep, axis, load_sweep,
                                     member_name, product, resolve_path, varying_keys, zipped)
from flow_maps.sweeps.results import (Results, aggregate, collect, flatten, latest_eval,
                                      member_state, seed_summary, to_markdown, write_csv)
from flow_maps.sweeps.runner import (command, format_override, is_done, process_id, read_json,
                                     run_member)
