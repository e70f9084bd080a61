"""Training: the loop (loop.py), batch sources (batches.py), TRL's loss formulas (losses.py), losses over batches
(objectives.py) and held-out preference metrics (held_out.py)."""
