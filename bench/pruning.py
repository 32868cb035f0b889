"""Pruning's saving on a tuning sweep: sweeps/smoke_tune.yaml (12 trials, TPE, seed 1) run
with the median pruner and without, in fresh storage; prints training steps spent, wall time
and the best validation loss each found.

    python bench/pruning.py [--sweep sweeps/smoke_tune.yaml]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def run(sweep: Path, pruner: str, folder: Path) -> dict:
    from attnlab.sweep.spec import load_study
    from attnlab.sweep.storage import open_study, storage_url
    from attnlab.sweep.worker import tune

    document = yaml.safe_load(sweep.read_text())
    document.update({"pruner": pruner, "output_dir": str(folder / pruner), "study": f"{document['study']}-{pruner}"})
    path = folder / f"{pruner}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    study = load_study(path)
    start = time.perf_counter()
    tune(study, storage_url(study))
    wall = time.perf_counter() - start
    trials = open_study(study, storage_url(study)).get_trials(deepcopy=False)
    steps = sum(max(t.intermediate_values, default=0) for t in trials)
    complete = [t.value for t in trials if t.state.name == "COMPLETE"]
    best = min(complete) if study.direction == "minimize" else max(complete)
    return {"trials": len(trials), "pruned": sum(t.state.name == "PRUNED" for t in trials), "steps": steps,
            "wall_s": wall, "best": best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", default=str(ROOT / "sweeps" / "smoke_tune.yaml"))
    args = parser.parse_args()
    os.environ.setdefault("ATTNLAB_DATA_MIRROR", str(ROOT.parent / "shared" / "data"))
    with tempfile.TemporaryDirectory() as tmp:
        results = {pruner: run(Path(args.sweep), pruner, Path(tmp)) for pruner in ("none", "median")}
    print(f"{'pruner':8} {'trials':>6} {'pruned':>6} {'train steps':>11} {'wall s':>7} {'best':>8}")
    for pruner, r in results.items():
        print(f"{pruner:8} {r['trials']:6} {r['pruned']:6} {r['steps']:11} {r['wall_s']:7.1f} {r['best']:8.4f}")
    saved = 1 - results["median"]["steps"] / results["none"]["steps"]
    print(f"pruning saved {saved:.0%} of the training steps "
          f"({1 - results['median']['wall_s'] / results['none']['wall_s']:.0%} of wall time)")


if __name__ == "__main__":
    main()
