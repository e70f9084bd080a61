"""Stages 1, 6 and 7, the same for every workflow; their inputs are workflow-neutral."""
