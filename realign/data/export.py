"""A run's training data for other trainers: mlx-lm (`mlx_lm lora --data OUT`) and TRL (conversational formats).

What a run directory holds and what the export makes of it:
  preference pairs  NN_stage[_roundR]/ of the stages that write them (PAIR_FILES), every round whose gate passed
  stage-1 SFT rows  not stored in the run: rebuilt from recipe.json's data section as stage 1 built them
  chosen answers    the pairs' chosen answers as SFT rows (what the run's continued-SFT control arm trains on), each
                    (prompt, answer) once

Both exports split train/valid by a hash of the prompt, so a prompt (its SFT rows and its pairs, every round's) lands
on one side only, and the same run exports the same split every time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from realign.data.datasets import DataConfig, GroundedDataConfig, load_data, write_jsonl
from realign.data.formats import DataFormatError, FileProblem, read_rows, write_rows
from realign.io import atomic_path

FORMATS = ("mlx-lm", "trl")
SFT_SOURCES = ("both", "stage1", "chosen")
# (stage directory, file) of every stage that writes preference pairs: the DPO and SRF workflows' stage 2, the
# anti-hallucination workflow's stage 4. RLVR writes none.
PAIR_FILES = (("02_preference_data", "train.jsonl"), ("04_hallucination_detection", "pairs.jsonl"))
# mlx-lm evaluates whole batches (default batch size 4) and fails on a valid set smaller than one: two batches' worth.
MIN_VALID = 8
# Every file an export may write, so --force can remove the ones a previous export of the other format left.
EXPORT_FILES = (
    "train.jsonl",
    "valid.jsonl",
    "preference/train.jsonl",
    "preference/valid.jsonl",
    "sft/train.jsonl",
    "sft/valid.jsonl",
    "README.md",
)


class ExportError(ValueError):
    """A run or output directory the export cannot use; the message names the path, what is wrong, what to do."""


Prompt = str | list[dict]


@dataclass
class PairRound:
    """One round's pairs file; skipped: why it was left out (its gate rejected it), else None."""

    path: Path
    round: int
    tier: str | None
    rows: int
    skipped: str | None = None


@dataclass
class RunData:
    """What a run holds for training: pairs (prompt, chosen, rejected) and SFT rows (prompt, completion)."""

    run_dir: Path
    pairs: list[dict] = field(default_factory=list)
    sft: list[tuple[Prompt, str]] = field(default_factory=list)
    sft_sources: dict[str, int] = field(default_factory=dict)  # source (stage1, chosen) -> SFT rows it gave
    rounds: list[PairRound] = field(default_factory=list)
    model_path: str | None = None  # the model the run started from, for the README's example command


@dataclass
class ExportReport:
    out: Path
    to: str
    files: dict[str, int]  # file (relative to out) -> rows
    data: RunData
    removed: list[str] = field(default_factory=list)  # a previous export's files that --force removed

    def summary(self) -> str:
        files = ", ".join(f"{name} {n}" for name, n in self.files.items())
        return f"exported {self.data.run_dir} for {self.to} to {self.out}: {files} rows; see {self.out / 'README.md'}"


# --- reading the run -----------------------------------------------------------------


def _round_of(stage_dir: Path, stage: str) -> int | None:
    """1 for 'NN_stage', R for 'NN_stage_roundR', None for another directory."""
    m = re.fullmatch(re.escape(stage) + r"(?:_round(\d+))?", stage_dir.name)
    return None if m is None else int(m.group(1) or 1)


def _gate_verdict(stage_dir: Path) -> tuple[str | None, str | None]:
    """(tier of the stage's gate report, why its data is unfit: REJECT or a declined MEDIUM; None when fit)."""
    reports = sorted(stage_dir.glob("gate_*.json"))
    if not reports:
        return None, None  # written before its gate ran (the run stopped there): still the stage's output
    try:
        report = json.loads(reports[0].read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(f"{reports[0]}: cannot read the gate report ({exc}); check the run directory") from exc
    tier, approval = report.get("tier"), report.get("approval") or ""
    if tier == "REJECT":
        return tier, f"{reports[0].name}: REJECT"
    if approval.startswith("MEDIUM gate rejected"):
        return tier, f"{reports[0].name}: {approval}"
    return tier, None


def read_pairs(run_dir: Path) -> tuple[list[dict], list[PairRound]]:
    """Every round's pairs whose gate did not reject them, in round order, duplicates dropped."""
    found = []
    for stage, name in PAIR_FILES:
        for d in run_dir.glob(stage + "*"):
            rnd = _round_of(d, stage)
            if rnd is not None and (d / name).is_file():
                found.append((rnd, d / name))
    pairs, rounds, seen = [], [], set()
    for rnd, path in sorted(found):
        tier, unfit = _gate_verdict(path.parent)
        rows = [r.to_record() for r in read_rows(path, "dpo")]
        rounds.append(PairRound(path, rnd, tier, len(rows), unfit))
        if unfit:
            continue
        for r in rows:
            key = (_key(r["prompt"]), r["chosen"], r["rejected"])
            if key not in seen:
                seen.add(key)
                pairs.append(r)
    return pairs, rounds


def _recipe(run_dir: Path) -> dict | None:
    path = run_dir / "recipe.json"
    if not path.is_file():
        return None
    try:
        recipe = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: cannot read the run's recipe ({exc}); check the run directory") from exc
    if not isinstance(recipe, dict):
        raise ExportError(f"{path}: is not a JSON object (expected the recipe `realign run` writes)")
    return recipe


def stage1_rows(run_dir: Path, recipe: dict | None) -> list[tuple[Prompt, str]]:
    """The rows stage 1 trained on, rebuilt from the recipe (the run does not store them): the embedded tasks from
    their seed, or the recipe's data.sft file as it is now. [] when the recipe turned stage-1 SFT off."""
    path = run_dir / "recipe.json"
    if recipe is None:
        raise ExportError(
            f"{path}: missing; stage-1 SFT rows are rebuilt from the run's recipe (export only the pairs' chosen "
            f"answers as SFT rows with --sft chosen)"
        )
    if not (recipe.get("sft") or {}).get("enabled", True):
        return []
    data = recipe.get("data") or {}
    grounded = set(GroundedDataConfig.model_fields) - set(DataConfig.model_fields)
    try:
        cfg = (GroundedDataConfig if grounded & set(data) else DataConfig).model_validate(data)
    except ValidationError as exc:
        raise ExportError(
            f"{path}: data section is not a data config ({exc.errors()[0]['msg']}); check the run"
        ) from exc
    if cfg.source == "embedded":
        return load_data(cfg).sft
    if not cfg.sft:
        return []
    sft = Path(cfg.sft).expanduser()
    if not sft.is_file():
        raise ExportError(
            f"{path}: data.sft {cfg.sft} is not a file here (relative paths are read from where the run started: "
            f"export from that directory, or pass --sft chosen)"
        )
    return [(r.prompt, r.completion) for r in read_rows(sft, "sft")]  # as load_data reads it


def read_run(run_dir: str | Path, sft: str = "both", need_pairs: bool = True) -> RunData:
    """The run's pairs and the SFT rows `sft` names (both | stage1 | chosen); ExportError when it lacks them."""
    run_dir = Path(run_dir)
    if sft not in SFT_SOURCES:
        raise ExportError(f"--sft {sft!r}: expected one of {', '.join(SFT_SOURCES)}")
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: no such directory (expected a run directory, e.g. runs/dpo-20250101-120000)")
    recipe = _recipe(run_dir)
    if recipe is None and not any(run_dir.glob("0[1-7]_*")):
        raise ExportError(f"{run_dir}: not a realign run directory (no recipe.json, no stage directories)")
    data = RunData(run_dir)
    data.pairs, data.rounds = read_pairs(run_dir)
    where = " or ".join(f"{s}*/{f}" for s, f in PAIR_FILES)
    pairs_needed = need_pairs or sft != "stage1"  # for TRL's main dataset, or for their chosen answers
    if not data.rounds and pairs_needed:
        raise ExportError(
            f"{run_dir}: no preference pairs ({where} not found): the run stopped before it made them, or its "
            f"workflow makes none (RLVR); finish the run, or export the stage-1 SFT rows alone with "
            f"--to mlx-lm --sft stage1"
        )
    if data.rounds and not data.pairs and pairs_needed:
        why = "; ".join(r.skipped or f"{r.path.name}: no rows" for r in data.rounds)
        raise ExportError(f"{run_dir}: no preference pairs fit to export ({why}); fix what the gate names and rerun")
    if sft in ("both", "stage1"):
        own = stage1_rows(run_dir, recipe)
        if not own and sft == "stage1":
            raise ExportError(
                f"{run_dir / 'recipe.json'}: stage 1 trained on no SFT rows (sft.enabled is false, or no data.sft); "
                f"use --sft chosen for the pairs' chosen answers"
            )
        data.sft_sources["stage1"] = len(own)
        data.sft += own  # as stage 1 trained on them, repeats included
    if sft in ("both", "chosen"):
        # a chosen answer that is already a row (stage 1's, or an earlier round's answer) adds nothing but weight
        seen = {(_key(p), c) for p, c in data.sft}
        for pair in data.pairs:
            if (_key(pair["prompt"]), pair["chosen"]) not in seen:
                seen.add((_key(pair["prompt"]), pair["chosen"]))
                data.sft.append((pair["prompt"], pair["chosen"]))
        data.sft_sources["chosen"] = len(data.sft) - data.sft_sources.get("stage1", 0)
    model = (recipe or {}).get("model") or {}
    if model.get("path") == "tiny":
        data.model_path = str(run_dir / "01_sft_preparation" / "base_model")
    elif isinstance(model.get("path"), str):
        data.model_path = model["path"]
    return data


# --- the train/valid split ----------------------------------------------------------------


def _key(prompt: Prompt) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False, sort_keys=True)


def _unit(key: str) -> float:
    """A prompt's place in [0, 1): the first 8 bytes of its SHA-256."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()[:8], "big") / 2**64


def _order(key: str) -> tuple[float, str]:
    return _unit(key), key


def valid_prompts(datasets: dict[str, Sequence[Prompt]], fraction: float) -> set[str]:
    """The prompts held out (as `_key`s), one set for every dataset so a prompt is on one side in all of them.

    datasets: what (for messages) -> the prompt of each of its rows. A prompt is held out when its hash falls below
    `fraction`; when that leaves a dataset fewer than MIN_VALID rows (or half its rows, if fewer), its prompts of
    lowest hash follow, so a small export still validates.
    """
    counts = {what: Counter(_key(p) for p in prompts) for what, prompts in datasets.items()}
    for what, c in counts.items():
        if len(c) < 2:
            raise ExportError(
                f"{what}: {sum(c.values())} rows from {len(c)} distinct prompt(s); a train/valid split needs 2 or more"
            )
    valid = {k for c in counts.values() for k in c if _unit(k) < fraction}
    for c in counts.values():
        n = sum(c.values())
        have = sum(v for k, v in c.items() if k in valid)
        for k in sorted(c, key=_order):
            if have >= min(MIN_VALID, n // 2):
                break
            if k not in valid and have + c[k] < n:
                valid.add(k)
                have += c[k]
    for c in counts.values():  # a dataset of few prompts, all held out: train on the one of highest hash
        if all(k in valid for k in c):
            valid.discard(max(c, key=_order))
    return valid


def partition(rows: Sequence, prompt_of: Callable, valid: set[str], what: str) -> tuple[list, list]:
    """(train, valid) rows, in the run's order."""
    train = [r for r in rows if _key(prompt_of(r)) not in valid]
    held = [r for r in rows if _key(prompt_of(r)) in valid]
    if not train or not held:
        raise ExportError(
            f"{what}: {len(rows)} rows leave {len(train)} to train and {len(held)} to validate on; "
            f"try another --valid-fraction"
        )
    return train, held


# --- the rows each trainer reads ------------------------------------------------------------


def _messages(prompt: Prompt) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]


def chat_row(prompt: Prompt, completion: str) -> dict:
    """mlx-lm's chat format and TRL's conversational language-modeling format (the same row)."""
    return {"messages": [*_messages(prompt), {"role": "assistant", "content": completion}]}


def trl_preference_row(pair: dict) -> dict:
    """TRL's conversational preference format (explicit prompt)."""
    return {
        "prompt": _messages(pair["prompt"]),
        "chosen": [{"role": "assistant", "content": pair["chosen"]}],
        "rejected": [{"role": "assistant", "content": pair["rejected"]}],
    }


# --- writing ------------------------------------------------------------------------------


def check_out(out: Path, force: bool) -> None:
    """OUT must be a new or empty directory, unless --force."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: is a file; OUT is the directory the export writes train.jsonl and valid.jsonl into")
    if out.is_dir() and not force and (entries := sorted(p.name for p in out.iterdir())):
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise ExportError(
            f"{out}: is not empty ({shown}); choose a new or empty directory, or pass --force to overwrite the "
            f"export's files there"
        )


def export_run(
    run_dir: str | Path,
    out: str | Path,
    to: str,
    *,
    sft: str = "both",
    valid_fraction: float = 0.1,
    force: bool = False,
) -> ExportReport:
    """Write RUN_DIR's data to OUT for `to` (mlx-lm | trl); each file atomically, README.md last."""
    out = Path(out)
    if to not in FORMATS:
        raise ExportError(f"--to {to!r}: expected one of {', '.join(FORMATS)}")
    if not 0.0 <= valid_fraction <= 0.5:
        raise ExportError(f"--valid-fraction {valid_fraction}: expected a fraction in [0, 0.5], e.g. 0.1")
    check_out(out, force)
    try:
        data = read_run(run_dir, sft, need_pairs=to == "trl")
    except (DataFormatError, FileProblem) as exc:  # a run file or the recipe's data file with a bad row
        raise ExportError(str(exc)) from exc

    files: dict[str, int] = {}
    sft_what, pairs_what = f"{data.run_dir}: SFT rows", f"{data.run_dir}: preference pairs"
    prompts = {sft_what: [p for p, _ in data.sft]} | (
        {pairs_what: [r["prompt"] for r in data.pairs]} if data.pairs else {}
    )
    valid = valid_prompts(prompts, valid_fraction)
    sft_train, sft_valid = partition(data.sft, lambda r: r[0], valid, sft_what)
    pair_train, pair_valid = partition(data.pairs, lambda r: r["prompt"], valid, pairs_what) if data.pairs else ([], [])
    # mlx_lm lora reads OUT/{train,valid}.jsonl: SFT rows there; TRL's main dataset is the pairs, SFT in sft/.
    sft_dir, pair_dir = ("", "preference/") if to == "mlx-lm" else ("sft/", "")
    write_pairs = _write_dpo if to == "mlx-lm" else _write_trl_pairs
    for name, rows in (("train", sft_train), ("valid", sft_valid)):
        files[f"{sft_dir}{name}.jsonl"] = _write_sft(out / f"{sft_dir}{name}.jsonl", rows)
    if data.pairs:
        for name, rows in (("train", pair_train), ("valid", pair_valid)):
            files[f"{pair_dir}{name}.jsonl"] = write_pairs(out / f"{pair_dir}{name}.jsonl", rows)
    files = dict(sorted(files.items(), key=lambda kv: (kv[0].count("/"), kv[0])))
    removed = _remove_stale(out, files) if force else []
    report = ExportReport(out, to, files, data, removed)
    with atomic_path(out / "README.md", "w") as fh:
        fh.write(readme(report, valid_fraction))
    return report


def _write_sft(path: Path, rows: Iterable[tuple[Prompt, str]]) -> int:
    return write_rows(path, [chat_row(p, c) for p, c in rows], "sft")  # validated on the way: never a bad row out


def _write_dpo(path: Path, rows: Iterable[dict]) -> int:
    return write_rows(path, list(rows), "dpo")


def _write_trl_pairs(path: Path, rows: Iterable[dict]) -> int:
    rows = [trl_preference_row(r) for r in rows]
    write_jsonl(path, rows)
    return len(rows)


def _remove_stale(out: Path, written: dict[str, int]) -> list[str]:
    """A previous export's files this one did not write (the other format's, or pairs no longer exported)."""
    removed = []
    for name in EXPORT_FILES:
        path = out / name
        if name != "README.md" and name not in written and path.is_file():
            path.unlink()
            removed.append(name)
            if path.parent != out and not any(path.parent.iterdir()):
                os.rmdir(path.parent)
    return removed


# --- README.md ----------------------------------------------------------------------------


def readme(report: ExportReport, valid_fraction: float) -> str:
    """What each file holds, where its rows came from, the split rule, and how to train on it."""
    data, files = report.data, report.files
    model, out = data.model_path or "MODEL", report.out.resolve()
    lines = [
        f"# {data.run_dir.name}: training data for {report.to}",
        "",
        f"Exported by `realign export {data.run_dir} --to {report.to} {report.out}` from the run directory "
        f"`{data.run_dir.resolve()}`.",
        "",
        "| file | rows | what |",
        "| --- | ---: | --- |",
    ]
    sft_what = 'SFT rows, chat format: `{"messages": [user..., {"role": "assistant", ...}]}`'
    if report.to == "mlx-lm":
        what = {
            "train.jsonl": sft_what,
            "valid.jsonl": sft_what,
            "preference/train.jsonl": 'preference pairs: `{"prompt", "chosen", "rejected"}` (realign\'s dpo format, '
            "TRL's standard format); not read by `mlx_lm lora`",
            "preference/valid.jsonl": "preference pairs, held out",
        }
    else:
        pref = (
            'preference pairs, TRL\'s conversational preference format: `{"prompt": [{"role": "user", ...}], '
            '"chosen": [{"role": "assistant", ...}], "rejected": [...]}`'
        )
        what = {
            "train.jsonl": pref,
            "valid.jsonl": pref,
            "sft/train.jsonl": sft_what.replace("chat format", "TRL's conversational language-modeling format"),
            "sft/valid.jsonl": "SFT rows, held out",
        }
    lines += [f"| `{name}` | {n} | {what[name]} |" for name, n in files.items()]
    lines += ["", "## Where the rows come from", ""]
    for rnd in data.rounds:
        rel = rnd.path.relative_to(data.run_dir)
        state = f"left out ({rnd.skipped})" if rnd.skipped else f"gate {rnd.tier or 'not run'}"
        lines.append(f"- pairs, round {rnd.round}: `{rel}`, {rnd.rows} rows, {state}")
    if "stage1" in data.sft_sources:
        lines.append(
            f"- SFT rows from stage 1: {data.sft_sources['stage1']} rows, rebuilt from `recipe.json`'s `data` section "
            "as stage 1 built them (the embedded tasks from their seed, or the `data.sft` file as it is now)"
        )
    if "chosen" in data.sft_sources:
        lines.append(
            f"- SFT rows from the pairs: {data.sft_sources['chosen']} chosen answers of the {len(data.pairs)} pairs "
            "(what the run's continued-SFT control arm trains on), each (prompt, answer) once and none that is "
            "already a stage-1 row"
        )
    lines += [
        "",
        "A pair repeated in a later round (same prompt, chosen and rejected) is written once.",
        "",
        "## Train / valid split",
        "",
        f"A prompt goes to `valid` when the first 8 bytes of the SHA-256 of its text (of a conversation, its JSON), "
        f"read as a fraction, are below "
        f"{valid_fraction:g}; when that leaves a file fewer than {MIN_VALID} rows (or half its rows, if fewer), its "
        "prompts of lowest hash follow. The held-out prompts are one set for the SFT rows and the pairs: every row of "
        "a prompt, of any round, is on one side, and the same run exports the same split.",
        "",
        "## Train on it",
        "",
    ]
    if report.to == "mlx-lm":
        lines += [
            "```bash",
            f"mlx_lm lora --model {model} --train --data {out} --mask-prompt --num-layers N --iters 100",
            "```",
            "",
            "`--mask-prompt` trains on the answers only, as realign does; `--num-layers` at most the model's layer "
            "count. `mlx_lm lora` applies the model's chat template, as realign does when it trains and samples.",
        ]
    else:
        lines += [
            "```python",
            "from datasets import load_dataset",
            "",
            f'sft = load_dataset("json", data_files={{"train": "{out}/sft/train.jsonl", '
            f'"validation": "{out}/sft/valid.jsonl"}})',
            f'pairs = load_dataset("json", data_files={{"train": "{out}/train.jsonl", '
            f'"validation": "{out}/valid.jsonl"}})',
            "# trl.SFTTrainer(model, train_dataset=sft['train'], ...), then trl.DPOTrainer(..., "
            "train_dataset=pairs['train'], eval_dataset=pairs['validation'])",
            "```",
            "",
            "Name the files as above: `data_dir=` would read `sft/` into the pairs' splits too. The run started from "
            f"the model `{model}`.",
        ]
    return "\n".join(lines) + "\n"
