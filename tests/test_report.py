"""Reports from a study with known stored results: numbers, deltas, markers, failures, formats."""

import json
import random
import re
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from attnlab.cli import main
from attnlab.report.build import build_report
from attnlab.report.significance import paired_test
from attnlab.sweep.spec import load_study
from attnlab.sweep.storage import open_study, storage_url

WORDS = "a the dog cat man woman child runs sits plays red blue green park street water ball bike under over".split()
N_SENTENCES = 200


def references() -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 12))) + f" {i} ." for i in range(N_SENTENCES)]


def degrade(refs: list[str], keep: float, seed: int) -> list[str]:
    """Keep `keep` of the sentences, replace the rest with a wrong one: quality ~ keep."""
    rng = random.Random(seed)
    return [r if rng.random() < keep else "something else entirely ." for r in refs]


# (row, seed) -> stored result, hypotheses quality; None = a failed/pruned trial made separately.
STORED = {
    ("base", 1): (30.0, 6.0, 0.5), ("base", 2): (32.0, 5.0, 0.5),
    ("A1", 1): (25.0, 7.0, 0.1), ("A1", 2): (27.0, 7.5, 0.1),   # much worse: significant
    ("C2", 1): (30.0, 6.0, None), ("C2", 2): (32.0, 5.0, None),  # the base's very outputs: delta 0, p = 1
    ("D1", 1): (33.0, 4.0, 0.6),                                  # seed 2 diverged
}


@pytest.fixture
def known_study(tmp_path):
    refs = references()
    (tmp_path / "val.tsv").write_text("".join(f"src {i}\t{r}\n" for i, r in enumerate(refs)))
    study_file = tmp_path / "known.yaml"
    study_file.write_text(f"""
study: known
description: a study with known stored results
output_dir: {tmp_path / 'runs'}
paper_table3: true
seeds: [1, 2]
base:
  model: {{n_layers: 1, d_model: 32, d_ff: 64, n_heads: 4}}
  data: {{corpus: custom, custom_files: {{train: {tmp_path / 'val.tsv'}, val: {tmp_path / 'val.tsv'}}},
         test_splits: []}}
  decode: {{beam_size: 4}}
  logging: {{wandb: disabled}}
rows:
  - {{id: A1, model: {{n_heads: 1}}}}
  - {{id: C2, model: {{n_layers: 2}}}}
  - {{id: D1, model: {{dropout: 0.0}}}}
  - {{id: E1, model: {{positional: learned}}}}
""")
    study = load_study(study_file)
    url = storage_url(study)
    ostudy = open_study(study, url)
    distributions = {"row": CategoricalDistribution([r.id for r in study.rows]),
                     "seed": CategoricalDistribution([1, 2])}
    hyps = {}
    for (row, seed), (bleu, ppl, keep) in STORED.items():
        run_dir = tmp_path / "runs" / "known" / f"{row}-s{seed}"
        (run_dir / "hypotheses").mkdir(parents=True)
        hyps[row, seed] = hyps["base", seed] if keep is None else degrade(refs, keep, seed)
        (run_dir / "hypotheses" / "val.txt").write_text("".join(h + "\n" for h in hyps[row, seed]))
        heads = 1 if row == "A1" else 4
        pd.DataFrame([{"kind": k, "layer": 0, "head": h, "entropy": 1.0 + h, "confidence": 0.5, "distance": 2.0,
                       "importance": 0.1 * h + (0.5 if k == "cross" else 0.0)}
                      for k in ("encoder_self", "decoder_self", "cross") for h in range(heads)]
                     ).to_csv(run_dir / "attention.csv", index=False)
        (run_dir / "metrics.jsonl").write_text("".join(
            json.dumps({"step": s, "train_seconds": s, "val/loss": 3 - s / 100, "val/ppl": 20 - s / 10,
                        "val/bleu": bleu * s / 100}) + "\n" for s in (50, 100)))
        attention = {k: {"entropy": 1.5, "confidence": 0.5, "distance": 2.0}
                     for k in ("encoder_self", "decoder_self", "cross")}
        ostudy.add_trial(create_trial(
            state=TrialState.COMPLETE, value=bleu, params={"row": row, "seed": seed}, distributions=distributions,
            user_attrs={"bleu": bleu, "chrf": bleu + 20, "val_ppl": ppl, "val_loss": 1.0, "params": 1_500_000 * heads,
                        "run_dir": str(run_dir), "attention": attention, "wandb_run_id": f"id-{row}-{seed}",
                        "changes": study.row(row).changes,
                        "sacrebleu_signature": "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"}))
    ostudy.add_trial(create_trial(
        state=TrialState.FAIL, params={"row": "D1", "seed": 2}, distributions=distributions,
        user_attrs={"fail_kind": "diverged", "fail_reason": "training loss is nan at step 12: the run diverged"}))
    ostudy.add_trial(create_trial(
        state=TrialState.PRUNED, params={"row": "E1", "seed": 1}, distributions=distributions,
        intermediate_values={50: 3.25}))
    return study, url, refs, hyps


def test_table_holds_exactly_the_stored_numbers_deltas_and_markers(known_study, tmp_path):
    study, url, _, _ = known_study
    report = build_report(study, url, tmp_path / "report", samples=1000)
    v = report.tables.variants.set_index("row")
    assert list(v.index) == ["base", "A1", "C2", "D1", "E1"]
    assert v.loc["base", "bleu"] == 31.0 and v.loc["base", "bleu_std"] == pytest.approx(2 ** 0.5)
    assert v.loc["base", "ppl"] == 5.5 and v.loc["base", "seeds"] == 2
    assert v.loc["A1", "bleu"] == 26.0 and v.loc["A1", "delta"] == -5.0 and v.loc["A1", "params_M"] == 1.5
    assert v.loc["A1", "sig"] == "**" and v.loc["A1", "p_value"] < 0.01
    assert v.loc["C2", "delta"] == 0.0 and v.loc["C2", "p_value"] == 1.0 and v.loc["C2", "sig"] == ""
    assert v.loc["D1", "bleu"] == 33.0 and v.loc["D1", "seeds"] == 1 and v.loc["D1", "failed"] == 1
    # Delta over the seeds both rows completed (seed 1: 33 - 30), the seeds the test pairs.
    assert v.loc["D1", "delta"] == 3.0 and v.loc["D1", "chrf"] == 53.0
    assert v.loc["E1", "seeds"] == 0 and pd.isna(v.loc["E1", "bleu"]) and v.loc["E1", "pruned"] == 1
    # Only the fields rows change are columns; the base row shows the base's values.
    assert v.loc["base", "h"] == 4 and v.loc["A1", "h"] == 1 and pd.isna(v.loc["C2", "h"])
    assert v.loc["C2", "N"] == 2 and v.loc["E1", "positional"] == "learned"
    # The paper's Table 3 beside ours: A1 24.9 (-0.9), C2 = N 4: 25.3 (-0.5), D1 24.6 (-1.2).
    assert v.loc["A1", "paper_bleu"] == 24.9 and v.loc["A1", "paper_delta"] == -0.9
    assert v.loc["C2", "paper_ppl"] == 5.19 and v.loc["D1", "paper_delta"] == -1.2
    assert report.tables.agreement.startswith(
        "The direction of the BLEU change agrees with the paper's for 1 of 3 rows; "
        "significantly (p < 0.05) for 1 of them")
    # Failed and pruned trials are listed with their reasons, never averaged in; missing ones named.
    status = "\n".join(report.status)
    assert "7 of 10 trials complete" in status
    assert "D1/seed 2 (fail)" in status and "E1/seed 1 (pruned)" in status and "E1/seed 2 (not queued)" in status
    assert ("diverged: training loss is nan at step 12" in status
            and "pruned at step 50 (validation value 3.25)" in status)
    # Attention: the heads whose masking costs most, averaged over seeds.
    attention = report.tables.attention.set_index("row")
    assert attention.loc["base", "most_important_heads"].startswith("x L0H3 (+0.800), x L0H2 (+0.700)")


def test_every_format_is_written_and_consistent(known_study, tmp_path):
    study, url, _, _ = known_study
    out = tmp_path / "report"
    assert main(["report", study.path, "--out", str(out), "--samples", "500"]) == 0
    md = (out / "README.md").read_text()
    assert ("| A1    | 1   |" in md and "26.00 ± 1.41 (2)" in md and "-5.00**" in md and "+0.00" in md
            and "+3.00**" in md)
    assert "paired bootstrap resampling" in md and "nrefs:1|bs:500|seed:12345" in md
    assert "tok:13a" in md  # the BLEU signature in the caption
    for figure in ("axis_h", "axis_N", "axis_P_drop", "learning_curves", "heads_base", "heads_A1"):
        assert (out / "figures" / f"{figure}.png").stat().st_size > 1000, figure
        assert (out / "figures" / f"{figure}.csv").exists()
        assert f"(figures/{figure}.png)" in md
    trials = pd.read_csv(out / "trials.csv")  # tidy: one row per trial, failures included
    assert len(trials) == 9 and set(trials["state"]) == {"COMPLETE", "FAIL", "PRUNED"}
    assert trials.loc[trials["state"] == "FAIL", "reason"].str.contains("diverged").all()
    axis = pd.read_csv(out / "figures" / "axis_h.csv")
    assert sorted(axis["h"].unique()) == [1, 4] and len(axis) == 4
    tex = (out / "table.tex").read_text()
    assert r"\begin{table}" in tex and r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"$\pm$" in tex and r"$\Delta$BLEU" in tex and "A1" in tex
    html = (out / "report.html").read_text()
    assert (html.count("<table") == 2
            and html.count("data:image/png;base64,") == len(list((out / "figures").glob("*.png"))))


def test_rows_link_to_their_wandb_runs(known_study, tmp_path, monkeypatch):
    study, url, _, _ = known_study
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    with pytest.raises(ValueError, match="needs the W&B entity: set logging.entity"):
        build_report(study, url, tmp_path / "r0", formats=("md",), samples=100, links=True)
    monkeypatch.setenv("WANDB_ENTITY", "me")
    report = build_report(study, url, tmp_path / "r1", formats=("md", "html"), samples=100, links=True)
    md = (report.out / "README.md").read_text()
    assert "[s1](https://wandb.ai/me/attnlab/runs/id-A1-1) [s2](https://wandb.ai/me/attnlab/runs/id-A1-2)" in md
    assert "<a href='https://wandb.ai/me/attnlab/runs/id-D1-1'>s1</a>" in (report.out / "report.html").read_text()


def test_significance_flags_a_clearly_better_system_not_identical_ones():
    refs = references()
    worse, better = degrade(refs, 0.2, 1), degrade(refs, 0.8, 1)
    assert paired_test([worse], [better], refs, samples=1000).p_value < 0.01
    assert paired_test([worse], [better], refs, test="ar", samples=2000).p_value < 0.01
    assert paired_test([worse], [worse], refs, samples=1000).p_value == 1.0
    assert paired_test([worse, better], [worse, better], refs, test="ar", samples=1000).p_value == 1.0
    # Two of 200 sentences differ: no evidence of a difference.
    nearly = list(worse)
    nearly[:2] = refs[:2]
    assert paired_test([worse], [nearly], refs, samples=1000).p_value > 0.05


def test_incomplete_study_reports_what_is_finished(known_study, tmp_path):
    study, _, _, _ = known_study
    empty_url = f"sqlite:///{tmp_path / 'empty.db'}"
    with pytest.raises(ValueError, match="holds no study named 'known'; it holds: none"):
        build_report(study, empty_url, tmp_path / "empty-report", formats=("md",))  # a typo never creates one
    open_study(study, empty_url)  # launched, nothing finished yet
    report = build_report(study, empty_url, tmp_path / "empty-report", formats=("md",))
    assert report.status[0] == "0 of 10 trials complete."
    assert "base/seed 1 (not queued)" in report.status[1]
    assert "not run" in (tmp_path / "empty-report" / "README.md").read_text()


def test_bad_input_is_a_clear_error(known_study, tmp_path, capsys):
    study, _, _, _ = known_study
    assert main(["report", study.path, "--format", "md,pdf"]) == 2
    assert "pdf not among md, tex, csv, html" in capsys.readouterr().err
    assert main(["report", study.path, "--split", "test_2017"]) == 2
    assert "split 'test_2017' was not scored" in capsys.readouterr().err
    other = tmp_path / "other.yaml"
    other.write_text(Path(study.path).read_text().replace("study: known", "study: never-run"))
    assert main(["report", str(other)]) == 2
    assert "no results for study 'never-run'" in capsys.readouterr().err


def test_latex_compiles(known_study, tmp_path):
    import os

    if shutil.which("pdflatex") is None:
        if os.environ.get("ATTNLAB_REQUIRE_LATEX"):
            pytest.fail("pdflatex is required here (apt-get install texlive-latex-base texlive-latex-recommended)")
        pytest.skip("no pdflatex (CI installs it)")
    study, url, _, _ = known_study
    report = build_report(study, url, tmp_path / "report", formats=("tex",), samples=200)
    document = tmp_path / "doc.tex"
    document.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage[margin=1cm,landscape]{geometry}"
                        "\n\\begin{document}\n\\input{" + str(report.out / "table.tex") + "}\n\\end{document}\n")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", document.name],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000
    assert not re.search(r"^! ", proc.stdout, re.M)


def test_html_page_loads_without_errors_and_shows_every_table_and_figure(known_study, tmp_path, browser):
    study, url, _, _ = known_study
    report = build_report(study, url, tmp_path / "report", formats=("html",), samples=200)
    page = report.out / "report.html"
    browser.get(page.as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    tables = browser.execute_script("return [...document.querySelectorAll('table')].map(t => t.rows.length)")
    assert tables == [1 + 5, 1 + 4]  # header + variants (base, A1, C2, D1, E1); header + rows with results
    images = browser.execute_script(
        "return [...document.images].map(i => "
        "[i.alt, i.complete && i.naturalWidth > 0, i.getBoundingClientRect().width])")
    figures = sorted(p.stem for p in report.files if p.suffix == ".png")
    assert sorted(alt for alt, _, _ in images) == figures
    assert all(loaded and width > 100 for _, loaded, width in images), images
    text = browser.find_element("tag name", "body").text
    assert "26.00 ± 1.41 (2)" in text and "Against the paper" in text and "pruned at step 50" in text
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1400, min(height + 100, 12000))
    shot = report.out / "screenshot.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 20_000


def test_report_wandb_writes_the_workspace_view_and_an_offline_report_run(known_study, tmp_path, monkeypatch):
    from attnlab.report.wandb_view import WORKSPACE_FILE
    from attnlab.train.wandb_offline import read_offline_run

    study, url, _, _ = known_study
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    report = build_report(study, url, tmp_path / "report", formats=("md",), samples=200, wandb=True)
    varied = report.tables.varied
    assert varied == ["model.n_heads", "model.n_layers", "model.dropout", "model.positional"]
    spec = json.loads((report.out / WORKSPACE_FILE).read_text())["spec"]
    runset = spec["section"]["runSets"][0]
    # W&B names a nested config key <section>.value.<key>: the grouping is exactly the varied fields.
    as_config = [key.replace(".", ".value.", 1) for key in varied]
    assert [g["name"] for g in runset["grouping"]] == as_config
    assert all(g["section"] == "config" for g in runset["grouping"])
    assert runset["filters"]["filters"][0]["value"] == "known"  # the study's W&B group only
    panels = spec["section"]["panelBankConfig"]["sections"][0]["panels"]
    by_type = {}
    for panel in panels:
        by_type.setdefault(panel["viewType"], []).append(panel["config"])
    [parallel] = by_type["Parallel Coordinates Plot"]
    assert [c["accessor"] for c in parallel["columns"]] == [f"config:{k}" for k in as_config] + ["summary:final/bleu"]
    assert [p["metrics"] for p in by_type["Run History Line Plot"]] == [["val/bleu"], ["val/ppl"]]
    assert len(by_type["Weave"]) == 2  # the per-head attention table and the samples
    [offline] = list((report.out / "wandb").glob("offline-run-*"))
    run = read_offline_run(offline)
    for _ in range(50):  # seen once: the log read before wandb's service had written all of it
        if "exit_code" in run and run["run"]:
            break
        time.sleep(0.2)
        run = read_offline_run(offline)
    assert run["run"]["group"] == "known" and run["run"]["job_type"] == "report"
    logged = {"/".join(key.split("/")[:2]) for key in set().union(*run["history"])}  # tables, images: nested
    assert {"report/variants", "report/attention"} <= logged
    assert {f"figures/{p.stem}" for p in report.files if p.suffix == ".png"} <= logged
    assert "Against the paper" not in run["summary"].get("agreement", "") and "agrees" in run["summary"]["agreement"]


def test_the_main_column_follows_the_studys_metric(known_study, tmp_path):
    from attnlab.report.render import display_frame

    study, url, _, _ = known_study
    path = Path(study.path)
    path.write_text(path.read_text().replace("paper_table3: true", "paper_table3: true\nmetric: val_ppl"))
    study = load_study(path)
    assert study.direction == "minimize"  # PPL is better lower
    report = build_report(study, url, tmp_path / "report", samples=200)
    v = report.tables.variants.set_index("row")
    # Deltas of PPL over the seeds both rows completed: A1 (7 - 6, 7.5 - 5), D1 4 - 6.
    assert v.loc["A1", "delta"] == pytest.approx(1.75) and v.loc["D1", "delta"] == pytest.approx(-2.0)
    assert pd.isna(v.loc["A1", "p_value"]) and any("no significance test for PPL" in n for n in report.tables.notes)
    shown = display_frame(report.tables).set_index("row")
    assert shown.loc["base", "PPL (dev)"] == "5.50 ± 0.71 (2)" and shown.loc["A1", "ΔPPL"] == "+1.75"
    assert "ΔBLEU" not in shown and shown.loc["base", "BLEU"] == "31.00"
    # Worse PPL (A1) goes the way of the paper's worse BLEU; better PPL (D1) does not; no change (C2) does not.
    assert report.tables.agreement.startswith("The direction of the PPL change (better or worse, against BLEU) "
                                              "agrees with the paper's for 1 of 3 rows")
    assert "PPL on the validation split, mean ± std" in (report.out / "README.md").read_text()
