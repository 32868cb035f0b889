"""Reports of a study: the paper's Table 3 regenerated from stored trials, with significance,
attention tables and figures, as Markdown, LaTeX, CSV and one self-contained HTML page."""
