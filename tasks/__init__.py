"""Prefect tasks, one module per stage: read inputs, call realign, write outputs atomically, return a small result.

shared/ holds the stages every workflow has (1 SFT preparation, 6 iterative training, 7 evaluation);
each workflow's own stages 2-5 live in its package (dpo/). No model code here: tests/test_purity.py.
"""
