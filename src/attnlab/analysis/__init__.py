"""Attention statistics (attention.py) and heatmaps (heatmaps.py).

The statistics' names live here, free of torch, for the report to import."""

STATS = ("entropy", "confidence", "distance", "score_std", "saturation")
