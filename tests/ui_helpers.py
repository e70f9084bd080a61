"""What the UI tests share: user data files for the DPO deployment, the run parameters, a browser."""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

from realign.data.demo import digit_strings, example

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def write_user_data(folder: Path, answers_filled: bool = True) -> dict:
    """Digit-reversal data as a user would bring it: SFT, preference prompts with answers, two eval sets.

    answers_filled=False writes the preference prompts with the placeholder answer 'TBD' (a common
    export mistake): the verifier then scores every sample 0, there is no preference gap, no pairs.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rev = [example("reverse", s) for s in digit_strings(900, seed=11)]
    cop = [example("copy", s) for s in digit_strings(700, seed=12)]
    sft, prompts = rev[:500] + cop[:500], rev[500:800] + cop[500:620]
    ev_rev, ev_cop = rev[800:], cop[620:]

    def dump(name, rows):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(folder / name)

    sft.sort(key=lambda e: e.digits)  # interleave the two skills
    write_prompts(folder, answers_filled, prompts)
    return {
        "source": "files",
        "sft": dump("sft.jsonl", [{"instruction": e.prompt, "output": e.answer} for e in sft]),
        "prompts": str(folder / "prompts.jsonl"),
        "eval_sets": [
            {
                "name": "reverse",
                "role": "target",
                "path": dump("eval_reverse.jsonl", [{"prompt": e.prompt, "answer": e.answer} for e in ev_rev]),
            },
            {
                "name": "copy",
                "role": "benchmark",
                "path": dump("eval_copy.jsonl", [{"prompt": e.prompt, "answer": e.answer} for e in ev_cop]),
            },
        ],
    }


def write_prompts(folder: Path, answers_filled: bool, prompts=None) -> None:
    if prompts is None:
        rev = [example("reverse", s) for s in digit_strings(900, seed=11)]
        cop = [example("copy", s) for s in digit_strings(700, seed=12)]
        prompts = rev[500:800] + cop[500:620]
    rows = [{"prompt": e.prompt, "answer": e.answer if answers_filled else "TBD"} for e in prompts]
    tmp = folder / ".prompts.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(folder / "prompts.jsonl")


def run_parameters(data: dict, runs_root: Path, **overrides) -> dict:
    """A small DPO run (one round) on `data`; thresholds relaxed where the tiny model's luck would decide."""
    config = {
        "runs_root": str(runs_root),
        "data": data,
        "sft": {
            "train": {
                "steps": 250,
                "batch_size": 32,
                "learning_rate": 3e-4,
                "warmup_steps": 5,
                "lora": None,
                "metrics_every": 40,
            }
        },
        "pairs": {"generation": {"n": 3, "batch_size": 64, "max_tokens": 10}, "use_calibration": False},
        "reward_model": {"steps": 50},
        "dpo": {
            "train": {"steps": 6, "batch_size": 8, "learning_rate": 5e-5, "checkpoint_every": 3, "metrics_every": 3}
        },
        "iterations": {"max_rounds": 1},
        "control": False,
        "thresholds": {
            "preference": {"min_pairs": 20, "min_preference_gap": 0.15},
            "sft": {"max_perplexity": 1000},
            "tiers": {"agreement_rate": {"direction": "higher", "high": 0.0, "medium": 0.0}},
            "reward_model": {"min_accuracy": 0.0},
            "optimization": {"max_kl": 100.0, "min_reward_margin": -100.0},
            "evaluation": {"min_capability_retention": 0.0},
        },
    }
    for key, value in overrides.items():
        config[key] = value
    return {"config": config}


@contextmanager
def browser(user_data_dir: Path):
    """Debian chromium through playwright (never `playwright install`), a fresh profile, headless."""
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium")
    if exe is None:
        raise RuntimeError("chromium not found: sudo apt-get install -y chromium (make test does this as root)")
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(user_data_dir),
            executable_path=exe,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            yield ctx.new_page()
        finally:
            ctx.close()
