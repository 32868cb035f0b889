"""`attnlab report STUDY --wandb`: the study where W&B users compare runs.

Two things, online when W&B credentials are configured, offline otherwise:
- a saved workspace view (wandb-workspaces) of the study's trial runs: only the study's group,
  runs grouped by the study's varied fields (one group per row), a parallel-coordinates panel
  over those fields and the study's metric, the validation curves, and the per-head attention
  and sample tables each trial logged. Offline its specification is written beside the report
  (WORKSPACE_FILE), to be saved later (`wandb_workspaces.workspaces.Workspace`);
- a run of the study's group with job type `report`, holding the report's tables and figures.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from attnlab.results import METRICS
from attnlab.sweep.spec import Study

WORKSPACE_FILE = "wandb_workspace.json"
REPORT_JOB = "report"
TRIAL_TABLES = ("attention/heads", "samples")  # what each trial logs (train/run.py)


def _entity(study: Study) -> str:
    return study.base.logging.entity or os.environ.get("WANDB_ENTITY") or ""


def curves(study: Study) -> list[str]:
    """The validation curves shown: the study's metric first, then BLEU and PPL."""
    return list(dict.fromkeys(METRICS[m].logged for m in (study.metric, "bleu", "val_ppl")))


def workspace(study: Study, varied: list[str]):
    """The saved view of the study's trial runs."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    final = f"final/{study.metric}"  # each trial's summary (train/run.py, _log_final)
    columns = [*(wr.Config(key) for key in varied), wr.SummaryMetric(final)]
    panels = [
        wr.ParallelCoordinatesPlot(title=f"{', '.join(varied) or 'rows'} -> {final}",
                                   columns=[wr.ParallelCoordinatesPlotColumn(metric=c) for c in columns]),
        *(wr.LinePlot(title=key, x="Step", y=[key]) for key in curves(study)),
        *(wr.WeavePanelSummaryTable(table_name=name, layout=wr.Layout(w=24, h=10)) for name in TRIAL_TABLES),
    ]
    return ws.Workspace(
        entity=_entity(study), project=study.base.logging.project, name=f"attnlab study {study.name}",
        settings=ws.WorkspaceSettings(x_axis="Step"),
        runset_settings=ws.RunsetSettings(filters=[ws.Metric("Group") == study.name],
                                          groupby=[ws.Config(key) for key in varied],
                                          pinned_columns=[f"summary:{final}"]),
        sections=[ws.Section(name=f"study {study.name}", is_open=True, panels=panels)],
    )


def specification(view) -> dict[str, Any]:
    """The view as JSON: what `Workspace.save()` would upload."""
    return view._to_model().model_dump(by_alias=True, exclude_none=True, mode="json")


def publish(study: Study, tables, out: Path, figures: list[Path]) -> list[str]:
    """Save (or write) the workspace view and log the report run; returns what was done."""
    import wandb

    from attnlab.train.tracking import wandb_mode

    configured = study.base.logging.wandb
    mode = wandb_mode("auto" if configured == "disabled" else configured)  # --wandb asks for it
    view = workspace(study, tables.varied)
    lines = []
    if mode == "online" and _entity(study):
        view.save()
        lines.append(f"W&B workspace view saved: {view.url}")
    else:
        path = out / WORKSPACE_FILE
        path.write_text(json.dumps(specification(view), indent=1))
        lines.append(f"W&B workspace view written to {path} (offline{'' if _entity(study) else ', no entity'}: "
                     "save it with wandb_workspaces once online)")
    log = study.base.logging
    run = wandb.init(project=log.project, entity=log.entity, group=study.name, job_type=REPORT_JOB,
                     name=f"{study.name}-report", dir=str(out), mode=mode, reinit="finish_previous",
                     config={"study": study.name, "metric": study.metric, "varied": tables.varied})
    run.log({"report/variants": wandb.Table(dataframe=_plain(tables.variants)),
             "report/attention": wandb.Table(dataframe=_plain(tables.attention)),
             **{f"figures/{p.stem}": wandb.Image(str(p)) for p in figures}})
    if tables.agreement:
        run.summary["agreement"] = tables.agreement
    directory = Path(run.dir).parent
    run.finish()
    lines.append(f"W&B report run logged {mode}" + (f": wandb sync {directory}" if mode == "offline" else ""))
    return lines


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """Cells W&B tables take: lists and dicts as JSON text."""
    return frame.map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
