"""The report's figures, each a PNG with its source data beside it as CSV.

- axis_<field>.png: BLEU against the varied value, one panel per axis, error bars = std over seeds;
- learning_curves.png: validation BLEU and PPL against training step, one line per row;
- heads_<row>.png: per-head entropy, confidence, distance and importance (layer x head).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from attnlab.analysis import STATS  # noqa: E402
from attnlab.report.collect import head_statistics, run_path  # noqa: E402
from attnlab.report.tables import KINDS, Tables, config_value, frame_column, short_name  # noqa: E402
from attnlab.sweep.spec import Study  # noqa: E402
from attnlab.train.history import read_history  # noqa: E402

HEAD_STATS = (*STATS, "importance")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _save(fig: plt.Figure, data: pd.DataFrame, directory: Path, stem: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    png = directory / f"{stem}.png"
    fig.savefig(png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    data.to_csv(directory / f"{stem}.csv", index=False)
    return png


def axis_figures(study: Study, tables: Tables, frame: pd.DataFrame, directory: Path) -> list[Path]:
    """For every field that rows vary alone: the study's metric (mean +- std over seeds) against its
    value, base included."""
    complete = frame[frame["state"] == "COMPLETE"] if len(frame) else frame
    metric = tables.metric
    score = frame_column(study, tables.split, metric)
    paths = []
    for key in tables.varied:
        points = []
        for row in tables.variants["row"]:
            trials = complete[complete["row"] == row]
            changed = json.loads(trials["changes"].iloc[0]) if len(trials) else None
            if trials.empty or not (row == "base" or set(changed) == {key}):
                continue
            value = changed[key] if row != "base" else config_value(study.base, key)
            if not isinstance(value, (int, float, str, bool)):
                value = json.dumps(value)  # lists (e.g. adam_betas) plot as categories
            for _, t in trials.iterrows():
                points.append({"row": row, short_name(key): value, "seed": t["seed"], metric.name: float(t[score])})
        rows = {p["row"] for p in points}
        if len(rows) < 2:
            continue
        data = pd.DataFrame(points)
        x = short_name(key)
        stats = data.groupby(["row", x], sort=False, dropna=False)[metric.name].agg(["mean", "std", "count"]) \
            .reset_index()
        numeric = pd.api.types.is_numeric_dtype(stats[x]) and stats[x].notna().all()
        stats = stats.sort_values(x) if numeric else stats
        fig, ax = plt.subplots(figsize=(4.2, 3.2))
        positions = stats[x] if numeric else range(len(stats))
        ax.errorbar(positions, stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=4,
                    linestyle="-" if numeric else "none")
        if not numeric:
            ax.set_xticks(list(positions), [str(v) for v in stats[x]], rotation=20)
        elif stats[x].min() > 0 and stats[x].max() / stats[x].min() >= 8:
            ax.set_xscale("log", base=2)
        for pos, (_, s) in zip(positions, stats.iterrows()):
            ax.annotate(s["row"], (pos, s["mean"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel(x)
        ax.set_ylabel(f"{metric.header} ({tables.split if metric.per_split else 'validation'})")
        ax.set_title(f"{study.name}: {x}", fontsize=9)
        ax.grid(alpha=0.3)
        paths.append(_save(fig, data, directory, f"axis_{_safe(x)}"))
    return paths


def learning_curves(study: Study, frame: pd.DataFrame, directory: Path) -> Path | None:
    """Validation BLEU and PPL against step for every row (mean over seeds)."""
    complete = frame[frame["state"] == "COMPLETE"] if len(frame) else frame
    records = []
    for _, trial in complete.iterrows():
        folder = run_path(trial.get("run_dir"), study)
        for record in read_history(folder) if folder else []:
            if "val/loss" in record:
                records.append({"row": trial["row"], "seed": trial["seed"], "step": record["step"],
                                "bleu": record.get("val/bleu"), "ppl": record.get("val/ppl")})
    if not records:
        return None
    data = pd.DataFrame(records)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for row, curve in data.groupby("row", sort=False):
        mean = curve.groupby("step")[["bleu", "ppl"]].mean()
        axes[0].plot(mean.index, mean["bleu"], marker=".", label=row, linewidth=2.2 if row == "base" else 1.2)
        axes[1].plot(mean.index, mean["ppl"], marker=".", label=row, linewidth=2.2 if row == "base" else 1.2)
    axes[0].set_ylabel("validation BLEU")
    axes[1].set_ylabel("validation PPL")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2 if data["row"].nunique() > 8 else 1, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.suptitle(f"{study.name}: learning curves (mean over seeds)", fontsize=10)
    return _save(fig, data, directory, "learning_curves")


def head_heatmaps(study: Study, frame: pd.DataFrame, directory: Path) -> list[Path]:
    """Per row: a grid (attention kind x statistic) of layer x head heatmaps, mean over seeds."""
    complete = frame[frame["state"] == "COMPLETE"] if len(frame) else frame
    paths = []
    for row, trials in complete.groupby("row", sort=False) if len(complete) else []:
        data = head_statistics(study, trials)
        if data is None:
            continue
        stats = [stat for stat in HEAD_STATS if stat in data]  # runs from before a statistic existed lack it
        data = data[["kind", "layer", "head", *stats]]
        data.insert(0, "row", row)
        layers, heads = int(data["layer"].max()) + 1, int(data["head"].max()) + 1
        # constrained layout gives each colorbar its own room: no tick label runs into the next panel
        fig, axes = plt.subplots(len(KINDS), len(stats), squeeze=False, layout="constrained",
                                 figsize=(2.9 * len(stats) + max(0, heads - 8) * 0.25,
                                          1.1 * len(KINDS) * max(layers, 2) / 2 + 1))
        for i, kind in enumerate(KINDS):
            part = data[data["kind"] == kind]
            for j, stat in enumerate(stats):
                ax = axes[i][j]
                grid = part.pivot(index="layer", columns="head", values=stat).reindex(range(layers))
                image = ax.imshow(grid.to_numpy(dtype=float), aspect="auto", cmap="viridis")
                fig.colorbar(image, ax=ax, fraction=0.08, pad=0.03).ax.tick_params(labelsize=6)
                ax.set_xticks(range(heads))
                ax.set_yticks(range(layers))
                ax.tick_params(labelsize=6)
                if i == 0:
                    ax.set_title(stat, fontsize=8)
                if j == 0:
                    ax.set_ylabel(f"{kind}\nlayer", fontsize=7)
                if i == len(KINDS) - 1:
                    ax.set_xlabel("head", fontsize=7)
        fig.suptitle(f"{study.name} / {row}: per-head attention statistics", fontsize=9)
        paths.append(_save(fig, data, directory, f"heads_{_safe(row)}"))
    return paths
