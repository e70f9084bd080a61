"""PNG plots of a run: training curves per step and before/after bars."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from realign.io import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    """Write the PNG atomically: a plot listed among a stage's outputs is never half-written."""
    with atomic_path(path) as fh:
        fig.savefig(fh, format="png", dpi=100)


PREFERENCE_PANELS = [
    ("loss", "loss"),
    ("rewards/margins", "reward margin"),
    ("kl", "KL(policy || reference), nats/token"),
    ("rewards/accuracies", "reward accuracy"),
]
RL_PANELS = [
    ("reward", "reward (mean over the step's samples)"),
    ("kl", "KL(policy || reference), nats/token"),
    ("entropy", "policy entropy, nats/token"),
    ("clip_ratio/region_mean", "clipped share of tokens"),
]


def training_curves(history: pd.DataFrame, path: str | Path, title: str = "DPO training") -> Path:
    """Four per-step panels (rounds concatenated): RL histories (a `reward` column) show reward (RLVR: the verified
    rate of the samples), KL, entropy and the clipped share; preference histories loss, reward margin, KL and reward
    accuracy."""
    plt = _plt()
    h = history.reset_index(drop=True)
    x = range(1, len(h) + 1)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    panels = list(RL_PANELS if "reward" in h else PREFERENCE_PANELS)
    if "verified_rate" in h:  # RLVR: the reward is 1 per sample the verifier accepted, so its mean is this rate
        panels[0] = ("verified_rate", "verified rate of the step's samples (= mean reward)")
    for ax, (col, label) in zip(axes.flat, panels):
        if col in h:
            series = h[col]
            ax.plot([i for i, v in zip(x, series) if v == v], [v for v in series if v == v], marker=".", linewidth=1)
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if "round" in h and h["round"].nunique() > 1:
        for boundary in h.index[h["round"].diff().fillna(0) != 0]:
            for ax in axes.flat:
                ax.axvline(boundary + 0.5, color="grey", linestyle="--", linewidth=0.8)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return Path(path)


def before_after(values: Mapping[str, Mapping[str, float]], path: str | Path, title: str = "before / after") -> Path:
    """Grouped bars: values[metric][variant] (variants e.g. baseline, dpo, control)."""
    plt = _plt()
    metrics = list(values)
    variants = list(dict.fromkeys(v for m in metrics for v in values[m]))
    fig, ax = plt.subplots(figsize=(max(6, 2 * len(metrics) + 2), 4.5))
    width = 0.8 / max(1, len(variants))
    for j, var in enumerate(variants):
        ys = [values[m].get(var, float("nan")) for m in metrics]
        bars = ax.bar([i + j * width for i in range(len(metrics))], ys, width, label=var)
        for b, y in zip(bars, ys):
            if y == y:
                ax.annotate(f"{y:.2f}", (b.get_x() + b.get_width() / 2, y), ha="center", va="bottom", fontsize=8)
    ax.set_xticks([i + width * (len(variants) - 1) / 2 for i in range(len(metrics))], metrics)
    ax.set_ylim(0, 1.1)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return Path(path)


def reliability_diagram(
    bins: list[dict], path: str | Path, title: str = "reliability", ece: float | None = None
) -> Path:
    """Accuracy against mean confidence per bin (bars at the bins' ranges; the diagonal is perfect calibration),
    with each bin's share of items written over its bar."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    for b in bins:
        ax.bar(b["low"], b["accuracy"], width=b["high"] - b["low"], align="edge", alpha=0.6, edgecolor="black")
        ax.plot(b["confidence"], b["accuracy"], "o", color="tab:red")
        ax.text(b["low"] + (b["high"] - b["low"]) / 2, b["accuracy"] + 0.02, f"{b['share']:.0%}", ha="center", size=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("confidence (length-normalised probability of the output)")
    ax.set_ylabel("accuracy")
    ax.set_title(title + (f" (ECE {ece:.3f})" if ece is not None and ece == ece else ""))
    ax.legend(loc="upper left")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return Path(path)
