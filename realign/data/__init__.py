"""Data: the JSONL/Parquet formats and validation (formats.py), datasets a run reads (datasets.py), preference pairs
(pairs.py), curation requests (curation.py) and the embedded demo tasks (demo.py)."""
