"""Evaluation: metrics (metrics.py), probes on a model (probes.py), the control arm (control.py), paired comparisons
and the verdict (verdict.py), round decisions (rounds.py), plots (plots.py)."""
