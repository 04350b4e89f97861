"""What people read about a run: the printed line, metrics.jsonl, curves.png and the selection report."""
