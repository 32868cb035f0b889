"""Tables and figures as Markdown (GitHub), LaTeX (booktabs `table`), CSV and one HTML page."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

import pandas as pd

from attnlab.analysis import SATURATED
from attnlab.report.significance import TESTS
from attnlab.report.tables import ALPHA, KINDS, STATS, Tables
from attnlab.results import METRICS

DASH = "–"


def _num(value: Any, digits: int = 2, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _with_std(r: dict[str, Any], column: str, digits: int, seeds: int) -> str:
    """ "mean ± std" over seeds (the mean alone for one seed)."""
    std = r.get(f"{column}_std")
    spread = f" ± {std:.{digits}f}" if seeds > 1 and std is not None and not math.isnan(std) else ""
    return _num(r[column], digits) + spread


def display_frame(tables: Tables, link=None, escape=lambda text: text) -> pd.DataFrame:
    """The variant table as text cells: the study's metric "mean ± std (n)", its delta with the
    significance marker, the other scores; with `link(text, url)` and W&B links, a column
    linking each seed's run."""
    v = tables.variants
    paper = "paper_bleu" in v
    records = []
    for r in v.itertuples(index=False):
        r = r._asdict()
        record: dict[str, Any] = {"row": r["row"]}
        for col in v.columns[1:v.columns.get_loc("params_M")]:
            value = r[col]
            if isinstance(value, float) and value.is_integer():
                value = int(value)  # a column with blanks turns ints into floats: show 4, not 4.0
            record[col] = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
        seeds = int(r["seeds"])
        small = r["params_M"] is not None and not math.isnan(r["params_M"]) and r["params_M"] < 10
        record["params (M)"] = _num(r["params_M"], 2 if small else 1)
        metric = tables.metric
        main_header = "PPL (dev)" if metric.column == "ppl" else metric.header
        record["PPL (dev)"] = _with_std(r, "ppl", 2, seeds)  # first, as in the paper's table
        main = _with_std(r, metric.column, metric.digits, seeds)
        record[main_header] = f"{main} ({seeds})" if seeds else \
            "not run" if not r["failed"] + r["pruned"] else "no result"
        for other in ("bleu", "chrf"):
            if other != metric.column:
                record[METRICS[other].header] = _num(r[other], METRICS[other].digits)
        record[f"Δ{metric.header}"] = _num(r["delta"], metric.digits, signed=True) + (r["sig"] or "")
        record["p"] = DASH if r["p_value"] is None or math.isnan(r["p_value"]) else f"{r['p_value']:.3f}"
        if paper:
            record["paper PPL"] = _num(r["paper_ppl"])
            record["paper BLEU"] = _num(r["paper_bleu"], 1)
            record["paper ΔBLEU"] = _num(r["paper_delta"], 1, signed=True)
        if link and tables.links:
            record["W&B"] = " ".join(link(f"s{seed}", url) for seed, url in tables.links.get(r["row"], []))
        records.append({k: escape(v) if k != "W&B" else v for k, v in record.items()})
    return pd.DataFrame.from_records(records)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|")  # a bare | would start a new column


STAT_LABELS = {"entropy": "entr", "confidence": "conf", "distance": "dist", "score_std": "score sd",
               "saturation": "sat"}


def attention_display(tables: Tables) -> pd.DataFrame:
    a = tables.attention
    if a.empty:
        return a
    out = pd.DataFrame({"row": a["row"]})
    short = {"encoder_self": "enc", "decoder_self": "dec", "cross": "cross"}
    for kind in KINDS:
        for stat in STATS:
            out[f"{short[kind]} {STAT_LABELS[stat]}"] = [_num(x) for x in a[f"{kind}:{stat}"]]
    out["most important heads"] = a["most_important_heads"]
    return out


def caption(study_name: str, tables: Tables, beam: int) -> str:
    test = TESTS.get(tables.test_signature.split("|")[1].split(":")[0], "") if tables.test_signature else ""
    metric = tables.metric
    where = f"{tables.split} (beam {beam})" if metric.per_split else "the validation split"
    parts = [f"{study_name}: {metric.header} on {where}, mean ± std over seeds (number of seeds); "
             f"PPL on the validation split; params in millions. Δ{metric.header}: mean over the seeds both rows "
             f"completed of (row - base); "
             f"* p < {ALPHA}, ** p < 0.01"]
    if test:
        parts.append(f"by sacreBLEU's {test} on the seed-matched hypotheses ({tables.test_signature})")
    if tables.bleu_signature:
        parts.append(f"BLEU signature {tables.bleu_signature}")
    return "; ".join(parts) + "."


# -- Markdown ---------------------------------------------------------------------------------
def markdown(title: str, description: str, tables: Tables, cap: str, status: list[str], figures: list[Path],
             out: Path) -> str:
    lines = [f"# {title}", ""]
    if description:
        lines += [description, ""]
    lines += status + [""] if status else []
    lines += ["## Variants", "", display_frame(tables, lambda text, url: f"[{text}]({url})", _md_cell).to_markdown(
        index=False, disable_numparse=True), "", cap, ""]
    if tables.agreement:
        lines += [f"**Against the paper:** {tables.agreement}", ""]
    lines += [f"- {n}" for n in tables.notes] + ([""] if tables.notes else [])
    attention = attention_display(tables)
    if not attention.empty:
        lines += ["## Attention", "", "Mean entropy (nats), confidence (mean max weight), distance (positions), score "
                  "sd (spread of the pre-softmax scores) and sat (share of queries whose largest weight exceeds "
                  f"{SATURATED}) per attention type; the heads whose masking raises the validation loss most "
                  "(enc = encoder self, dec = decoder self, x = encoder-decoder; L layer, H head).", "",
                  attention.to_markdown(index=False, disable_numparse=True), ""]
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in figures] + [""]
    return "\n".join(lines)


# -- LaTeX ------------------------------------------------------------------------------------
TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
               "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}"}  # OT1 prints <>| wrongly
TEX_HEADERS = {"N": "$N$", "d_model": "$d_{model}$", "d_ff": "$d_{ff}$", "h": "$h$", "d_k": "$d_k$", "d_v": "$d_v$",
               "P_drop": "$P_{drop}$", "eps_ls": r"$\epsilon_{ls}$",
               "paper ΔBLEU": r"paper $\Delta$BLEU", "p": "$p$"}


def tex_escape(text: str) -> str:
    out = "".join(TEX_SPECIAL.get(c, c) for c in str(text))
    return out.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace(DASH, "--")


def _tex_table(frame: pd.DataFrame, cap: str, label: str) -> str:
    frame = frame.map(tex_escape)
    frame.columns = [TEX_HEADERS.get(c, tex_escape(c)) for c in frame.columns]
    body = frame.to_latex(index=False, escape=False, column_format="l" + "r" * (len(frame.columns) - 1))
    return "\n".join([r"\begin{table}[htbp]", r"\centering", r"\small", body.strip(),
                      rf"\caption{{{tex_escape(cap)}}}", rf"\label{{{label}}}", r"\end{table}", ""])


def latex(name: str, tables: Tables, cap: str) -> str:
    """`table` environments with booktabs rules; \\usepackage{booktabs} in the preamble."""
    label = "".join(c if c.isalnum() else "-" for c in name)
    parts = [f"% attnlab report of study {name}; needs \\usepackage{{booktabs}}",
             _tex_table(display_frame(tables), cap, f"tab:{label}")]
    attention = attention_display(tables)
    if not attention.empty:
        parts.append(_tex_table(attention, f"{name}: attention statistics per variant.", f"tab:{label}-attention"))
    return "\n".join(parts)


# -- HTML -------------------------------------------------------------------------------------
STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{padding:.25em .6em;border-bottom:1px solid #ddd;
text-align:right}th{border-bottom:2px solid #444}td:first-child,th:first-child{text-align:left}
figure{display:inline-block;margin:.5em}img{max-width:100%}.caption{font-size:.85em;color:#555;max-width:1100px}
.status{background:#fff7e0;padding:.5em 1em}"""


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(path.stem)}</figcaption></figure>")


def html_page(title: str, description: str, tables: Tables, cap: str, status: list[str], figures: list[Path]) -> str:
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    if description:
        parts.append(f"<p>{html.escape(description)}</p>")
    if status:
        parts.append("<div class='status'>" + "".join(f"<p>{html.escape(s.lstrip('- '))}</p>" for s in status)
                     + "</div>")
    frame = display_frame(tables, lambda text, url: f"<a href='{html.escape(url)}'>{html.escape(text)}</a>",
                          html.escape)  # cells escaped here, so to_html(escape=False) keeps only the links raw
    parts.append("<h2>Variants</h2>" + frame.to_html(index=False, classes="variants", border=0, escape=False))
    parts.append(f"<p class='caption'>{html.escape(cap)}</p>")
    if tables.agreement:
        parts.append(f"<p><b>Against the paper:</b> {html.escape(tables.agreement)}</p>")
    parts += [f"<p class='caption'>{html.escape(n)}</p>" for n in tables.notes]
    attention = attention_display(tables)
    if not attention.empty:
        parts.append("<h2>Attention</h2>" + attention.to_html(index=False, classes="attention", border=0))
    if figures:
        parts.append("<h2>Figures</h2>" + "".join(_image(p) for p in figures))
    parts.append("</body></html>")
    return "\n".join(parts)
