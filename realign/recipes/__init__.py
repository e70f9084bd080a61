"""Workflow recipes: common.py (model, stage 1, stage 6, loading) and one module per workflow."""
