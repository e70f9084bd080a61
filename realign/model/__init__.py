"""Models: loading and saving (load.py), the tiny kit (tiny.py), batched generation (generate.py), log-probs
(logprobs.py)."""
