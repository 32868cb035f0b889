"""The CLI re-executes itself with tcmalloc/jemalloc preloaded where the system has one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from attnlab.allocator import ENV, find_allocator
from attnlab.errors import ConfigError


def test_setting_system_means_no_preload_and_a_bad_path_is_an_error(tmp_path):
    assert find_allocator("system") is None
    with pytest.raises(ConfigError, match="ATTNLAB_ALLOCATOR='/nope.so': no such file; use auto, system"):
        find_allocator("/nope.so")
    lib = tmp_path / "libfake_malloc.so"
    lib.write_bytes(b"")
    assert find_allocator(str(lib)) == str(lib)


@pytest.mark.skipif(find_allocator("auto") is None, reason="neither tcmalloc nor jemalloc installed")
@pytest.mark.parametrize("setting", ["auto", "system"])
def test_attnlab_train_runs_under_the_found_allocator(setting, mirror, cache, tmp_path):
    from test_train_run import quick_config

    config = quick_config(mirror, cache, tmp_path, name=f"alloc-{setting}", max_steps=2, val_every_steps=None)
    values = config.to_dict()
    values["logging"]["wandb"] = "disabled"
    values["data"]["test_splits"] = []
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(values))
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", f"{ENV}_DONE")}
    env[ENV] = setting
    proc = subprocess.run([sys.executable, "-m", "attnlab.cli", "train", str(tmp_path / "run.yaml"), "--quiet"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((Path(values["output_dir"]) / f"alloc-{setting}" / "result.json").read_text())
    assert result["allocator"] == (find_allocator("auto") if setting == "auto" else "system")
