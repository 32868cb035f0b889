"""Attention statistics (attention.py) and heatmaps (heatmaps.py).

The statistics' names live here, free of torch, for the report to import."""

STATS = ("entropy", "confidence", "distance", "score_std", "saturation")
SATURATED = 0.9  # a query is saturated when its largest attention weight exceeds this
