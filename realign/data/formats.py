"""Training-data formats: row models, JSONL/Parquet readers and writers, and a streaming validator.

Formats (one JSON object per line, or one Parquet row):
  sft   {"instruction", "output"} (or "response" for "output"), or {"messages": [{"role", "content"}, ...]}
  dpo   {"prompt", "chosen", "rejected"}          (also used by ORPO and CPO)
  grpo  {"prompt", "responses": [{"text", "score"}]}, score in [0, 1]
  rlvr  {"problem", "solution", "responses": [{"text", "correct"}]}, correct a boolean; optional "tests": a list of
        Python statements (MBPP-style asserts) for code tasks
  grounded  {"question", "passages": [{"id", "text"}], "answer"}, optional "citations": [ids]; the answer is stated in
        a passage, or is the abstention "I don't know" (realign.data.grounded)

Extra keys on a row are allowed and ignored by the models (JSONL output of
`validate` keeps the original line, so they are not lost).
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from realign.data.grounded import Passage, current_abstention, item_problems
from realign.io import atomic_path

FormatName = Literal["sft", "dpo", "grpo", "rlvr", "grounded"]


# --- row models ----------------------------------------------------------------


def _not_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("empty", "is empty")
    return value


Text = Annotated[str, AfterValidator(_not_blank)]


class _Row(BaseModel):
    # strict: "0.5" is not a number and 1 is not a boolean; data files should say what they mean.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class Message(_Row):
    role: Literal["system", "user", "assistant", "tool"] = Field(description="Who speaks.")
    content: Text = Field(description="What is said.")


class SFTRow(_Row):
    """Supervised example: instruction + output (or response), or a chat transcript."""

    instruction: Text | None = None
    output: Text | None = None
    response: Text | None = None
    messages: list[Message] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _complete(self) -> "SFTRow":
        if self.messages is not None:
            if not any(m.role == "assistant" for m in self.messages):
                raise PydanticCustomError("no_assistant", "messages has no assistant turn")
            return self
        missing = []
        if self.instruction is None:
            missing.append("instruction")
        if self.output is None and self.response is None:
            missing.append("output")
        if missing:
            raise PydanticCustomError(
                "missing_sft", "missing field {fields}", {"fields": " and ".join(f"'{m}'" for m in missing)}
            )
        return self

    @property
    def prompt(self) -> str | list[dict]:
        """The instruction, or the messages before the last assistant turn."""
        if self.messages is None:
            return self.instruction  # type: ignore[return-value]
        last = max(i for i, m in enumerate(self.messages) if m.role == "assistant")
        return [m.model_dump() for m in self.messages[:last]]

    @property
    def completion(self) -> str:
        """The target text: output/response, or the last assistant turn."""
        if self.messages is None:
            return self.output if self.output is not None else self.response  # type: ignore[return-value]
        return [m for m in self.messages if m.role == "assistant"][-1].content

    def to_record(self) -> dict:
        if self.messages is not None:
            return {"messages": [m.model_dump() for m in self.messages]}
        return {"instruction": self.instruction, "output": self.completion}


def _shared_prefix(a: str, b: str) -> int:
    """Length of the prompt two implicit-prompt texts share: their common prefix, without a space that starts both
    completions (TRL's extract_prompt keeps that space on the completions)."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    if n < min(len(a), len(b)) and n and a[n - 1] == " ":
        n -= 1
    return n


def _assistant_text(value: list, name: str) -> str:
    """The text of a conversational completion: one assistant message (TRL's conversational preference format)."""
    if len(value) != 1 or not isinstance(value[0], dict) or value[0].get("role") != "assistant":
        raise PydanticCustomError(
            "conversation",
            "field '{name}' is a message list but not one assistant message (expected a list holding one message "
            "with role 'assistant', or a string)",
            {"name": name},
        )
    content = value[0].get("content")
    if not isinstance(content, str):
        raise PydanticCustomError(
            "conversation",
            "field '{name}[0].content' has the wrong type: {kind} (expected a non-empty string)",
            {"name": name, "kind": _type_name(content)},
        )
    return content


class DPORow(_Row):
    """Preference pair (DPO, ORPO, CPO) in any of TRL's preference formats, held as prompt + two completions.

    standard: prompt, chosen, rejected strings. conversational: prompt a message list, chosen and rejected one assistant
    message each. implicit prompt (either format): no prompt field; chosen and rejected both start with it (the
    longest common prefix, of characters or of messages). A prompt of a single user message is held as its text.
    """

    prompt: Text | list[Message] = Field(min_length=1)
    chosen: Text
    rejected: Text

    @model_validator(mode="before")
    @classmethod
    def _trl_forms(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        row, chosen, rejected = dict(data), data.get("chosen"), data.get("rejected")
        if "prompt" not in row and type(chosen) is type(rejected) and isinstance(chosen, (str, list)):
            if isinstance(chosen, str):
                cut = _shared_prefix(chosen, rejected)
            else:
                cut = next(
                    (i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected))
                )
            if cut == 0 or cut in (len(chosen), len(rejected)):
                raise PydanticCustomError(
                    "implicit_prompt",
                    "missing field 'prompt', and chosen and rejected do not both start with one (expected a 'prompt' "
                    "field, or TRL's implicit prompt: chosen and rejected that start with the same prompt)",
                )
            row.update(prompt=chosen[:cut], chosen=chosen[cut:], rejected=rejected[cut:])
        for name in ("chosen", "rejected"):
            if isinstance(row.get(name), list):
                row[name] = _assistant_text(row[name], name)
        prompt = row.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], dict):
            if prompt[0].get("role") == "user" and isinstance(prompt[0].get("content"), str):
                row["prompt"] = prompt[0]["content"]  # the same tokens: a text prompt is one user turn
        return row

    @model_validator(mode="after")
    def _different(self) -> "DPORow":
        if isinstance(self.prompt, list) and self.prompt[-1].role == "assistant":
            raise PydanticCustomError(
                "conversation",
                "prompt ends with an assistant message (expected the conversation up to the answer, e.g. ending with "
                "the user's turn)",
            )
        if self.chosen.strip() == self.rejected.strip():
            raise PydanticCustomError("identical", "chosen is identical to rejected")
        return self

    @property
    def prompt_text(self) -> str:
        """The prompt as one text (message contents, one per line): for decontamination and display."""
        return prompt_text(self.prompt)

    def to_record(self) -> dict:
        prompt = self.prompt if isinstance(self.prompt, str) else [m.model_dump() for m in self.prompt]
        return {"prompt": prompt, "chosen": self.chosen, "rejected": self.rejected}


def prompt_text(prompt: str | list) -> str:
    """A prompt (text or message list, as models or dicts) as one text: message contents, one per line."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(m.content if isinstance(m, Message) else m["content"] for m in prompt)


class ScoredResponse(_Row):
    text: Text
    score: float = Field(ge=0.0, le=1.0)


class GRPORow(_Row):
    """A prompt with a group of scored responses."""

    prompt: Text
    responses: list[ScoredResponse] = Field(min_length=1)

    def to_record(self) -> dict:
        return {"prompt": self.prompt, "responses": [r.model_dump() for r in self.responses]}


class VerifiedResponse(_Row):
    text: Text
    correct: bool


class RLVRRow(_Row):
    """A verifiable problem, its reference solution and checked responses; for code tasks, `tests`: Python
    statements (MBPP-style asserts) a response's code must pass."""

    problem: Text
    solution: Text
    responses: list[VerifiedResponse] = Field(min_length=1)
    tests: list[Text] | None = Field(None, min_length=1)

    def to_record(self) -> dict:
        record = {
            "problem": self.problem,
            "solution": self.solution,
            "responses": [r.model_dump() for r in self.responses],
        }
        if self.tests is not None:
            record["tests"] = list(self.tests)
        return record


class GroundedPassage(_Row):
    id: Text
    text: Text


class GroundedRow(_Row):
    """A question answered from its passages (with the ids of those it cites), or abstained from."""

    question: Text
    passages: list[GroundedPassage] = Field(min_length=1)
    answer: Text
    citations: list[Text] | None = None

    @model_validator(mode="after")
    def _grounded(self) -> "GroundedRow":
        passages = [Passage(p.id, p.text) for p in self.passages]
        problems = item_problems(self.question, passages, self.answer, self.citations, current_abstention())
        if problems:
            raise PydanticCustomError("grounded", "{problem}", {"problem": problems[0]})
        return self

    def to_record(self) -> dict:
        record = {
            "question": self.question,
            "passages": [p.model_dump() for p in self.passages],
            "answer": self.answer,
        }
        if self.citations is not None:
            record["citations"] = list(self.citations)
        return record


ROW_MODELS: dict[str, type[_Row]] = {
    "sft": SFTRow,
    "dpo": DPORow,
    "grpo": GRPORow,
    "rlvr": RLVRRow,
    "grounded": GroundedRow,
}
FORMAT_ALIASES = {"orpo": "dpo", "cpo": "dpo"}
REQUIRED_FIELDS = {
    "sft": "instruction + output (or response), or messages",
    "dpo": "prompt, chosen, rejected",
    "grpo": "prompt, responses[{text, score}]",
    "rlvr": "problem, solution, responses[{text, correct}]",
    "grounded": "question, passages[{id, text}], answer",
}


def canonical_format(fmt: str) -> str:
    """'dpo' for 'orpo'/'cpo', the name itself for the four formats; ValueError otherwise."""
    name = FORMAT_ALIASES.get(fmt.lower(), fmt.lower())
    if name not in ROW_MODELS:
        raise ValueError(f"unknown format '{fmt}' (expected one of sft, dpo, grpo, rlvr, grounded, orpo, cpo)")
    return name


def guess_format(obj: dict) -> str | None:
    """The format a row's keys suggest, or None when they suggest none."""
    keys = set(obj)
    if {"question", "passages"} <= keys:
        return "grounded"
    if {"chosen", "rejected"} & keys:
        return "dpo"
    if {"problem", "solution"} & keys:
        return "rlvr"
    if "responses" in keys:
        items = obj["responses"] if isinstance(obj["responses"], list) else []
        if any(isinstance(r, dict) and "correct" in r for r in items):
            return "rlvr"
        return "grpo"
    if {"instruction", "messages", "output", "response"} & keys:
        return "sft"
    return None


# --- errors --------------------------------------------------------------------


class DataFormatError(ValueError):
    """A row that does not match its format; str() is `FILE:LINE: what (expected what)`."""

    def __init__(self, path: str | Path, line: int, problems: list[str]):
        self.path, self.line, self.problems = str(path), line, problems
        super().__init__("\n".join(f"{self.path}:{line}: {p}" for p in problems))


class FileProblem(ValueError):
    """A failure of a whole file (not of a row): one line naming the path, what is wrong and the fix."""


# Content that is not JSONL text, whatever the file is called: (magic bytes at offset 0, what it is, the fix).
# Text could start with "BZh" or "PAR1", so those are matched on more than their printable prefix.
_MAGIC = [
    (b"\x1f\x8b", "gzip-compressed", "decompress it first (gunzip -k FILE)"),
    (b"PK\x03\x04", "a zip archive", "extract the JSONL file from it"),
    (b"\xfd7zXZ\x00", "xz-compressed", "decompress it first (unxz -k FILE)"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed", "decompress it first (unzstd FILE)"),
]


def _sniff(path: Path, head: bytes) -> tuple[str, str] | None:
    """(what the content is, the fix) when `path` holds a known binary format, else None."""
    for magic, what, fix in _MAGIC:
        if head.startswith(magic):
            return what, fix
    if len(head) >= 10 and head[:3] == b"BZh" and head[3:4].isdigit() and head[4:10] == b"1AY&SY":
        return "bzip2-compressed", "decompress it first (bunzip2 -k FILE)"
    if head.startswith(b"PAR1"):
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            if fh.read(4) == b"PAR1":  # Parquet starts and ends with its magic
                return "a Parquet file", "give it a .parquet name"
    return None


def check_input_file(path: str | Path) -> None:
    """Raise FileProblem unless `path` is a readable, non-empty JSONL or Parquet file whose bytes match its name."""
    path = Path(path)
    if not path.exists():
        raise FileProblem(f"{path}: no such file")
    if path.is_dir():
        raise FileProblem(f"{path}: is a directory (expected a JSONL or Parquet file)")
    if not path.is_file():
        raise FileProblem(f"{path}: is not a regular file (a pipe or a device?); save it to a file first")
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise FileProblem(f"{path}: cannot read it ({exc.strerror or exc}); check its permissions") from exc
    if not head:
        raise FileProblem(f"{path}: is empty (expected one JSON object per line)")
    if _is_parquet(path):
        if not head.startswith(b"PAR1"):
            raise FileProblem(f"{path}: is not a Parquet file (no PAR1 header); is it JSONL with a .parquet name?")
        return
    if (found := _sniff(path, head)) is not None:
        raise FileProblem(f"{path}: is {found[0]}, not JSONL text: {found[1]}")


def check_output_paths(inputs: Iterable[str | Path], outputs: Iterable[str | Path | None]) -> None:
    """Raise FileProblem when an output would clobber an input or another output (also through `..`, symlinks
    and hard links), when it exists and is not a regular file (a symlink, a device, a directory), or when its
    folder is a file."""
    ins = [Path(p) for p in inputs]
    outs = [Path(p) for p in outputs if p is not None]
    for o in outs:
        if o.name in ("", ".", ".."):
            raise FileProblem(f"{o}: is a directory, not a file name; name the file to write")
        if os.path.lexists(o):
            mode = os.lstat(o).st_mode
            if not stat.S_ISREG(mode):
                kind = (
                    "a symlink" if stat.S_ISLNK(mode) else "a directory" if stat.S_ISDIR(mode) else "not a regular file"
                )
                raise FileProblem(f"{o}: exists and is {kind}; refusing to replace it: choose another path")
        parent = o.parent if str(o.parent) else Path(".")
        if parent.exists() and not parent.is_dir():
            raise FileProblem(f"{parent}: is a file, not a directory; choose another path for {o.name}")

    def key(p: Path) -> str:
        try:
            r = str(p.resolve())
        except (OSError, RuntimeError) as exc:  # a symlink loop
            raise FileProblem(f"{p}: cannot be resolved ({exc}); choose another path") from exc
        # macOS volumes are case-insensitive and normalise Unicode: Clean.jsonl and clean.jsonl are one file there
        return unicodedata.normalize("NFC", r).casefold() if sys.platform == "darwin" else r

    def same(a: Path, b: Path) -> bool:
        if key(a) == key(b):
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)  # hard links

    for i, o in enumerate(outs):
        for src in ins:
            if same(o, src):
                raise FileProblem(f"{o}: is the input file {src}; refusing to overwrite it: choose another path")
        for other in outs[i + 1 :]:
            if same(o, other):
                raise FileProblem(f"{o} and {other} are the same file; good rows and rejects need two paths")


_FIELD_EXPECT = {
    "score": "a number in [0, 1]",
    "correct": "true or false",
    "responses": "a non-empty list of response objects",
    "tests": "a non-empty list of Python statements (strings)",
    "messages": "a non-empty list of {role, content} objects",
    "role": "one of system, user, assistant, tool",
}


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _type_name(value: Any) -> str:
    return {
        dict: "object",
        list: "list",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _kind(pydantic_type: str) -> str:
    """A short, stable category for a pydantic error type (counted in the summary)."""
    if pydantic_type in ("missing", "missing_sft"):
        return "missing"
    if pydantic_type == "too_short":
        return "empty_list"
    if pydantic_type in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return "out_of_range"
    if pydantic_type.endswith("_type") or pydantic_type == "literal_error":
        return "wrong_type"
    return pydantic_type  # empty, identical, no_assistant


def _reported(exc: ValidationError) -> list[dict]:
    """The errors to report. A text-or-messages field (a DPO prompt) fails both union branches: keep the branch the
    value was meant for (a list: the message list's errors; anything else: the text's)."""
    errors = exc.errors(include_url=False)
    unions = {e["loc"][0] for e in errors if "list[Message]" in e["loc"]}
    kept = []
    for err in errors:
        if err["loc"] and err["loc"][0] in unions:
            if "list[Message]" in err["loc"] and err["type"] == "list_type":
                continue
            text_branch = err["loc"][1:] == ("function-after[_not_blank(), str]",)
            if text_branch and err["type"] == "string_type" and isinstance(err["input"], list):
                continue
        kept.append(err)
    return kept or errors


def describe_errors(exc: ValidationError) -> list[str]:
    """Turn pydantic errors into `what is wrong (expected what)` phrases, one per problem."""
    out = []
    for err in _reported(exc):
        loc = tuple(p for p in err["loc"] if p not in ("function-after[_not_blank(), str]", "list[Message]"))
        name = _loc(loc)
        leaf = next((p for p in reversed(loc) if isinstance(p, str)), "")
        expect = _FIELD_EXPECT.get(leaf, "a non-empty string")
        kind = err["type"]
        if kind == "missing":
            out.append(f"missing field '{name}' (expected {expect})")
        elif kind == "missing_sft":
            out.append(f"{err['msg']} (expected {REQUIRED_FIELDS['sft']})")
        elif kind == "empty":
            out.append(f"field '{name}' is empty (expected non-empty text)")
        elif kind in ("conversation", "implicit_prompt"):
            out.append(err["msg"])
        elif kind == "identical":
            out.append("chosen is identical to rejected (expected two different responses)")
        elif kind == "no_assistant":
            out.append("messages has no assistant turn (expected at least one message with role 'assistant')")
        elif kind == "too_short":
            out.append(f"field '{name}' is empty (expected {expect})")
        elif kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
            out.append(f"field '{name}' is {err['input']!r}, outside the allowed range (expected {expect})")
        elif kind == "literal_error":
            out.append(f"field '{name}' is {err['input']!r} (expected {expect})")
        elif kind.endswith("_type") or kind in ("model_type", "dict_type"):
            if kind in ("model_type", "dict_type"):
                expect = "an object"
            elif kind == "float_type":
                expect = _FIELD_EXPECT.get(leaf, "a number")
            out.append(f"field '{name}' has the wrong type: {_type_name(err['input'])} (expected {expect})")
        else:
            out.append(f"field '{name}': {err['msg']} (expected {expect})")
    return out


# --- parsing one line --------------------------------------------------------------


@dataclass
class LineResult:
    """Outcome of one input line or Parquet row.

    line: 1-based line (or row) number; raw: the line's bytes (None for Parquet);
    row: the validated model when ok; problems: phrases when not.
    """

    line: int
    raw: bytes | None
    obj: dict | None = None
    row: _Row | None = None
    problems: list[str] = field(default_factory=list)
    kind: str = "ok"

    @property
    def ok(self) -> bool:
        return not self.problems


def check_object(obj: Any, fmt: str) -> tuple[_Row | None, list[str], str]:
    """Validate one decoded JSON value against `fmt`: (row, problems, error kind)."""
    if not isinstance(obj, dict):
        return (
            None,
            [f"line is a JSON {_type_name(obj)}, not an object (expected one JSON object per line)"],
            "not_object",
        )
    model = ROW_MODELS[fmt]
    try:
        return model.model_validate(obj), [], "ok"
    except ValidationError as exc:
        guessed = guess_format(obj)
        if guessed is not None and guessed != fmt:
            return None, [f"looks like {guessed}, not {fmt} (expected fields {REQUIRED_FIELDS[fmt]})"], "wrong_format"
        return None, describe_errors(exc), _kind(_reported(exc)[0]["type"])


def check_line(raw: bytes, line: int, fmt: str) -> LineResult | None:
    """Decode and validate one JSONL line; None for a blank line."""
    if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # UTF-8 byte-order mark written by some editors
    if not raw.strip():
        return None
    try:
        text = raw.rstrip(b"\r\n").decode("utf-8")  # unstripped, so JSON columns match the file
    except UnicodeDecodeError as exc:
        return LineResult(
            line, raw, problems=[f"invalid UTF-8 at byte {exc.start + 1} (expected UTF-8 text)"], kind="utf8"
        )
    try:
        obj = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        return LineResult(
            line,
            raw,
            problems=[f"invalid JSON: {exc.msg} at column {exc.colno} (expected one JSON object per line)"],
            kind="json",
        )
    except RecursionError:
        return LineResult(
            line, raw, problems=["JSON nested too deeply (expected at most a few hundred levels)"], kind="json"
        )
    except ValueError as exc:  # NaN/Infinity, an integer too long to convert
        return LineResult(line, raw, problems=[f"invalid JSON: {exc} (expected standard JSON)"], kind="json")
    if (bad := _lone_surrogate(obj)) is not None:
        return LineResult(
            line, raw, problems=[f"text holds a lone UTF-16 surrogate {bad} (expected valid Unicode)"], kind="utf8"
        )
    try:
        row, problems, kind = check_object(obj, fmt)
    except RecursionError:
        return LineResult(
            line, raw, problems=["JSON nested too deeply (expected at most a few hundred levels)"], kind="json"
        )
    return LineResult(line, raw, obj=obj if isinstance(obj, dict) else None, row=row, problems=problems, kind=kind)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def _lone_surrogate(value: Any) -> str | None:
    """The first lone surrogate (e.g. '\\ud800') in any string of a decoded JSON value, else None."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as exc:
                return f"\\u{ord(v[exc.start]):04x}"
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return None


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def iter_checked(path: str | Path, fmt: str, batch_rows: int = 10_000) -> Iterator[LineResult | None]:
    """Stream a JSONL or Parquet file, yielding one result per line (None for blank lines).

    Memory is bounded by one line (JSONL) or one record batch (Parquet).
    """
    fmt, path = canonical_format(fmt), Path(path)
    if _is_parquet(path):
        import pyarrow as pa  # heavy; only for Parquet files
        import pyarrow.parquet as pq

        try:
            source = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            raise FileProblem(f"{path}: is not a readable Parquet file ({exc}); re-export it") from exc
        n = 0
        batches = source.iter_batches(batch_size=batch_rows)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (pa.ArrowException, OSError) as exc:
                raise FileProblem(f"{path}: Parquet data unreadable after row {n} ({exc}); re-export it") from exc
            for rec in batch.to_pylist():
                n += 1
                obj = {k: v for k, v in rec.items() if v is not None}  # Parquet nulls mean "absent"
                row, problems, kind = check_object(obj, fmt)
                yield LineResult(n, None, obj=obj, row=row, problems=problems, kind=kind)
    with open(path, "rb") as fh:
        for n, raw in enumerate(_lines(fh), start=1):
            yield check_line(raw, n, fmt)


_EOL = re.compile(rb"\r\n|\r|\n")


def _lines(fh, chunk: int = 1 << 20) -> Iterator[bytes]:
    """Lines of a binary file, each with its ending: LF, CRLF or a lone CR (old Mac files), mixed as they come.

    Streams in chunks (memory is bounded by the longest line); a CR at the end of a chunk waits for the next byte,
    so a CRLF split across chunks stays one ending.
    """
    rest = b""
    while block := fh.read(chunk):
        buf = rest + block
        if b"\r" not in buf:  # the common case, at C speed
            *lines, rest = buf.split(b"\n")
            for line in lines:
                yield line + b"\n"
            continue
        start = 0
        for m in _EOL.finditer(buf):
            if m.group() == b"\r" and m.end() == len(buf):
                break  # maybe the first half of a CRLF: decide with the next chunk
            yield buf[start : m.end()]
            start = m.end()
        rest = buf[start:]
    if rest:
        yield rest


# --- writing -------------------------------------------------------------------


def _arrow_schema(fmt: str):
    import pyarrow as pa

    s = pa.string()
    if fmt == "sft":
        return pa.schema(
            [("instruction", s), ("output", s), ("messages", pa.list_(pa.struct([("role", s), ("content", s)])))]
        )
    if fmt == "dpo":
        return pa.schema([("prompt", s), ("chosen", s), ("rejected", s)])
    if fmt == "grpo":
        return pa.schema([("prompt", s), ("responses", pa.list_(pa.struct([("text", s), ("score", pa.float64())])))])
    if fmt == "grounded":
        return pa.schema(
            [
                ("question", s),
                ("passages", pa.list_(pa.struct([("id", s), ("text", s)]))),
                ("answer", s),
                ("citations", pa.list_(s)),
            ]
        )
    return pa.schema(
        [
            ("problem", s),
            ("solution", s),
            ("responses", pa.list_(pa.struct([("text", s), ("correct", pa.bool_())]))),
            ("tests", pa.list_(s)),
        ]
    )


class RowWriter:
    """Append rows to a JSONL or Parquet file (by extension), atomically on close.

    `write_raw(bytes)` copies an original JSONL line verbatim (JSONL only);
    `write(row)` writes a validated row's canonical record.
    """

    def __init__(self, path: str | Path, fmt: str, batch_rows: int = 10_000):
        self.path, self.fmt, self.batch_rows = Path(path), canonical_format(fmt), batch_rows
        self.count = 0
        self._ctx = atomic_path(self.path, "wb")
        self._fh = self._ctx.__enter__()
        self._parquet = _is_parquet(self.path)
        self._buffer: list[dict] = []
        self._pq_writer = None

    def write(self, row: _Row) -> None:
        if self._parquet and isinstance(row, DPORow) and isinstance(row.prompt, list):
            raise FileProblem(
                f"{self.path}: a preference row with a multi-message prompt (a system prompt or earlier turns) cannot "
                "be written to Parquet here, whose prompt column is text; write JSONL instead (--out FILE.jsonl)"
            )
        self.count += 1
        if self._parquet:
            self._buffer.append(row.to_record())
            if len(self._buffer) >= self.batch_rows:
                self._flush()
        else:
            self._fh.write(json.dumps(row.to_record(), ensure_ascii=False).encode() + b"\n")

    def write_raw(self, raw: bytes) -> None:
        if self._parquet:
            raise ValueError("write_raw is for JSONL output")
        self.count += 1
        self._fh.write(raw.rstrip(b"\r\n") + b"\n")

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = _arrow_schema(self.fmt)
        if self._pq_writer is None:
            self._pq_writer = pq.ParquetWriter(self._fh, schema)
        if self._buffer:
            self._pq_writer.write_table(pa.Table.from_pylist(self._buffer, schema=schema))
            self._buffer = []

    def close(self, error: BaseException | None = None) -> None:
        if error is None and self._parquet:
            self._flush()
            self._pq_writer.close()
        if error is None:
            self._ctx.__exit__(None, None, None)
        else:
            self._ctx.__exit__(type(error), error, error.__traceback__)

    def __enter__(self) -> "RowWriter":
        return self

    def __exit__(self, et, ev, tb) -> None:
        self.close(ev)


def first_record(path: str | Path) -> dict | None:
    """The first row of a JSONL or Parquet file as a dict (None when the file has no rows)."""
    path = Path(path)
    if _is_parquet(path):
        import pyarrow.parquet as pq  # heavy; only for Parquet files

        table = pq.read_table(path)
        return table.slice(0, 1).to_pylist()[0] if table.num_rows else None
    with open(path, "rb") as fh:
        for raw in fh:
            if raw.strip():
                obj = json.loads(raw)
                return obj if isinstance(obj, dict) else None
    return None


def read_rows(path: str | Path, fmt: str) -> Iterator[_Row]:
    """Yield validated rows; raise DataFormatError (FILE:LINE: ...) at the first bad one.

    Use `realign validate` (or `validate_file`) to keep going past bad rows.
    """
    for res in iter_checked(path, fmt):
        if res is None:
            continue
        if res.problems:
            raise DataFormatError(path, res.line, res.problems)
        yield res.row  # type: ignore[misc]


def write_rows(path: str | Path, rows: Iterable[_Row | dict], fmt: str) -> int:
    """Write rows (models or dicts, validated here) to JSONL or Parquet atomically; returns the count."""
    fmt = canonical_format(fmt)
    model = ROW_MODELS[fmt]
    with RowWriter(path, fmt) as w:
        for i, row in enumerate(rows, start=1):
            if isinstance(row, dict):
                try:
                    row = model.model_validate(row)
                except ValidationError as exc:
                    raise DataFormatError(f"<row {i} written to {path}>", i, describe_errors(exc)) from exc
            w.write(row)
        return w.count


# --- validating a whole file -------------------------------------------------------


@dataclass
class ValidationReport:
    """Counts from `validate_file`. kinds: error kind -> number of rejected lines."""

    path: str
    fmt: str
    lines: int = 0
    blank: int = 0
    valid: int = 0
    rejected: int = 0
    kinds: Counter = field(default_factory=Counter)
    out_path: str | None = None
    rejects_path: str | None = None

    def summary(self) -> str:
        parts = [f"{self.path}: {self.lines} lines, {self.valid} valid, {self.rejected} rejected, {self.blank} blank"]
        if self.out_path:
            parts.append(f"clean rows -> {self.out_path}")
        if self.rejects_path:
            parts.append(f"rejects -> {self.rejects_path}")
        return "; ".join(parts)


def _reject_record(path: Path, res: LineResult) -> bytes:
    rec: dict[str, Any] = {"file": str(path), "line": res.line, "kind": res.kind, "reasons": res.problems}
    if res.raw is not None:
        try:
            rec["raw"] = res.raw.rstrip(b"\r\n").decode("utf-8")
        except UnicodeDecodeError:
            rec["raw_base64"] = base64.b64encode(res.raw.rstrip(b"\r\n")).decode("ascii")
    else:
        rec["row"] = res.obj
    return json.dumps(rec, ensure_ascii=False, default=str).encode() + b"\n"


def validate_file(
    path: str | Path,
    fmt: str,
    *,
    out: str | Path | None = None,
    rejects: str | Path | None = None,
    on_problem: Callable[[str], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ValidationReport:
    """Validate every line of `path` as `fmt`, streaming.

    out: clean rows go here (JSONL input to JSONL output keeps each original line byte for byte).
    rejects: bad rows go here as JSONL {file, line, kind, reasons, raw | raw_base64 | row}.
    on_problem: called with each `FILE:LINE: what (expected what)` message.
    on_progress: called with the number of bytes/rows read so far, every 10,000 lines.
    Both output files are written atomically, and only if the whole file was read. A whole-file failure (not
    a file, empty, compressed, colliding or unsafe output paths) raises FileProblem before anything is written.
    """
    path = Path(path)
    fmt = canonical_format(fmt)
    check_input_file(path)
    check_output_paths([path], [out, rejects])
    report = ValidationReport(
        str(path), fmt, out_path=str(out) if out else None, rejects_path=str(rejects) if rejects else None
    )
    copy_raw = out is not None and not _is_parquet(Path(out)) and not _is_parquet(path)
    out_w = RowWriter(out, fmt) if out else None
    rej_ctx = atomic_path(rejects, "wb") if rejects else None
    rej_fh = rej_ctx.__enter__() if rej_ctx else None
    error: BaseException | None = None
    try:
        for n, res in enumerate(iter_checked(path, fmt), start=1):
            report.lines = n
            if on_progress and n % 10_000 == 0:
                on_progress(n)
            if res is None:
                report.blank += 1
                continue
            if res.ok:
                report.valid += 1
                if out_w:
                    out_w.write_raw(res.raw) if copy_raw else out_w.write(res.row)  # type: ignore[arg-type]
                continue
            report.rejected += 1
            report.kinds[res.kind] += 1
            if on_problem:
                for p in res.problems:
                    on_problem(f"{path}:{res.line}: {p}")
            if rej_fh:
                rej_fh.write(_reject_record(path, res))
    except BaseException as exc:
        error = exc
        raise
    finally:
        # Rejects are saved before the clean rows: if saving them fails, the clean rows are not published either,
        # so a bad row is never lost while the summary counts it.
        if rej_ctx:
            try:
                rej_ctx.__exit__(type(error) if error else None, error, error.__traceback__ if error else None)
            except BaseException as exc:
                if out_w:
                    out_w.close(exc)
                raise
        if out_w:
            out_w.close(error)
    return report
