"""Documents in: PDF, Markdown, plain text, HTML and JSONL files read into passages with stable ids.

A passage is a paragraph of a page of a file (a long paragraph is cut at sentence ends into parts), with the id
`<file stem>:p<page>:<paragraph>[.<part>]` (PDF) or `<file stem>:<paragraph>[.<part>]` (other files; JSONL: the
line number), so the same file always gives the same ids and a citation `[notes:p2:3]` names where the text is.
Ids stay within the 40 characters a grounded citation may have (realign.data.grounded).

`read_documents(paths)` reads files and folders (recursively, supported extensions only) and returns the passages
and the rejects: paragraphs too short to use, duplicates of a passage read earlier, JSONL lines without text, each
with its file, line or page and the reason. A file that cannot be read at all raises DocumentError naming it.
"""

from __future__ import annotations

import hashlib
import html.parser
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

SUFFIXES = {
    ".pdf": "pdf",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    ".html": "html",
    ".htm": "html",
    ".jsonl": "jsonl",
}
JSONL_TEXT_FIELDS = ("text", "content", "passage", "body", "document")
MIN_WORDS = 6  # a paragraph shorter than this is a heading, a page number or debris, not a passage
MAX_CHARS = 600  # longer paragraphs are cut at sentence ends: short passages keep prompts short
MAX_STEM = 24  # file stem characters in an id (ids must fit a 40-character citation)


class DocumentError(ValueError):
    """A document that cannot be read: the message names the file, what is wrong and what to do."""


@dataclass(frozen=True)
class DocPassage:
    """One passage: `id` (stable), the file it came from, its page (PDF, from 1) or None, its paragraph number
    within the page or file (from 1; JSONL: the line), and its text (whitespace collapsed)."""

    id: str
    source: str
    page: int | None
    paragraph: int
    text: str

    def record(self) -> dict:
        return asdict(self)


@dataclass
class DocumentSet:
    """Passages read from the files, the rejected paragraphs (file, where, reason, text) and the files read."""

    passages: list[DocPassage] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def document_files(paths: Iterable[str | Path], allow_empty: bool = False) -> list[Path]:
    """The readable files named: files as given, folders walked recursively for the SUFFIXES (sorted, hidden
    entries skipped). DocumentError for a path that does not exist, a file of another type, or a folder without
    documents (unless allow_empty: a nightly inbox may be empty)."""
    found: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            inside = sorted(
                f
                for f in p.rglob("*")
                if f.is_file()
                and f.suffix.lower() in SUFFIXES
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
            if not inside and not allow_empty:
                raise DocumentError(
                    f"{p}: folder has no documents (expected files ending {', '.join(sorted(SUFFIXES))})"
                )
            found += inside
        elif p.is_file():
            if p.suffix.lower() not in SUFFIXES:
                raise DocumentError(
                    f"{p}: unsupported document type {p.suffix or '(no extension)'!r} "
                    f"(expected one of {', '.join(sorted(SUFFIXES))}; convert it, e.g. to .txt or .md)"
                )
            found.append(p)
        else:
            raise DocumentError(f"{p}: no such file or folder (check the --source path)")
    return list(dict.fromkeys(found))


def read_documents(paths: Iterable[str | Path], max_chars: int = MAX_CHARS, min_words: int = MIN_WORDS) -> DocumentSet:
    """Passages of every document under `paths`, in file order; identical passages (whitespace and case aside)
    are kept once, the later ones rejected with the id they repeat."""
    out = DocumentSet()
    seen: dict[str, str] = {}
    stems: dict[str, str] = {}
    for path in document_files(paths):
        out.files.append(str(path))
        stem = _stem(path, stems)
        for page, para, text, where in _paragraphs(path):
            if where.startswith("line ") and ": " in where:  # a JSONL line without usable text
                out.rejects.append(_reject(path, where.split(": ")[0], where.split(": ", 1)[1], text))
                continue
            words = len(text.split())
            if words < min_words:
                reason = f"{words} words (fewer than {min_words}): not a passage" if text else "no text"
                out.rejects.append(_reject(path, where, reason, text))
                continue
            parts = _cut(text, max_chars)
            for k, part in enumerate(parts, start=1):
                pid = f"{stem}:" + (f"p{page}:" if page is not None else "") + str(para)
                pid += f".{k}" if len(parts) > 1 else ""
                key = " ".join(part.casefold().split())
                if key in seen:
                    out.rejects.append(_reject(path, where, f"duplicate of passage {seen[key]}", part))
                    continue
                seen[key] = pid
                out.passages.append(DocPassage(pid, str(path), page, para, part))
    return out


def _reject(path: Path, where: str, reason: str, text: str) -> dict:
    return {"file": str(path), "where": where, "reason": reason, "text": text[:200]}


def _stem(path: Path, stems: dict[str, str]) -> str:
    """The id prefix of a file: its stem ([A-Za-z0-9_-], at most MAX_STEM); two files of one stem in different
    folders get the second a short hash of its path, so ids never collide."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem)[:MAX_STEM].strip("_") or "doc"
    owner = stems.setdefault(stem, str(path.resolve()))
    if owner != str(path.resolve()):
        stem = f"{stem[: MAX_STEM - 7]}~{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:6]}"
        stems[stem] = str(path.resolve())
    return stem


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


def sentences(text: str) -> list[str]:
    """The sentences of a passage: cut after . ! ? followed by a capital letter or a digit."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _cut(text: str, max_chars: int) -> list[str]:
    """`text` in parts of at most max_chars, cut at sentence ends (a sentence longer than that is one part)."""
    if len(text) <= max_chars:
        return [text]
    parts, cur = [], ""
    for s in sentences(text):
        if cur and len(cur) + 1 + len(s) > max_chars:
            parts.append(cur)
            cur = s
        else:
            cur = f"{cur} {s}".strip()
    return parts + ([cur] if cur else [])


def _blocks(text: str) -> list[str]:
    """Paragraphs of plain text: blocks between blank lines, lines joined, whitespace collapsed."""
    return [" ".join(b.split()) for b in re.split(r"\n\s*\n", text.replace("\r\n", "\n")) if b.strip()]


def _paragraphs(path: Path) -> Iterator[tuple[int | None, int, str, str]]:
    """(page, paragraph number, text, where) of a file, by its type."""
    kind = SUFFIXES[path.suffix.lower()]
    if kind == "pdf":
        for page, text in enumerate(_pdf_pages(path), start=1):
            if not text.strip():  # kept in the rejects as an empty passage (read_documents says why)
                yield page, 1, "", f"page {page} (no text layer: a scanned page? run OCR on it)"
            for i, block in enumerate(_pdf_blocks(text), start=1):
                yield page, i, block, f"page {page}, paragraph {i}"
        return
    if kind == "jsonl":
        yield from _jsonl_paragraphs(path)
        return
    raw = _read_text(path)
    blocks = _markdown_blocks(raw) if kind == "markdown" else _html_blocks(raw) if kind == "html" else _blocks(raw)
    for i, block in enumerate(blocks, start=1):
        yield None, i, block, f"paragraph {i}"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentError(
            f"{path}: invalid UTF-8 at byte {exc.start + 1} (expected UTF-8 text; re-save it as UTF-8)"
        ) from exc
    except OSError as exc:
        raise DocumentError(f"{path}: cannot read: {exc}") from exc


def _pdf_pages(path: Path) -> list[str]:
    """The text of every page (pypdf's extraction; a scanned page without a text layer gives '')."""
    from pypdf import PdfReader  # only curation reads PDFs
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted:
            raise DocumentError(f"{path}: the PDF is encrypted (expected an unencrypted PDF; decrypt it first)")
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, OSError) as exc:
        if isinstance(exc, DocumentError):
            raise
        raise DocumentError(f"{path}: not a readable PDF ({exc}); check the file or export it again") from exc
    if not any(p.strip() for p in pages):
        raise DocumentError(
            f"{path}: no text in its {len(pages)} page(s) (a scanned PDF without a text layer?); run OCR on it first"
        )
    return pages


def _pdf_blocks(text: str) -> list[str]:
    """Paragraphs of a PDF page. Extraction often loses blank lines: then a line ending a sentence and shorter than
    the page's typical line closes a paragraph, and a hyphen at a line's end joins the word across lines."""
    if re.search(r"\n\s*\n", text):
        return _blocks(text)
    lines = [ln.strip() for ln in text.splitlines()]
    width = sorted(len(ln) for ln in lines if ln)[len([ln for ln in lines if ln]) * 3 // 4] if any(lines) else 0
    blocks, cur = [], ""
    for ln in lines:
        if not ln:
            continue
        cur = cur[:-1] + ln if cur.endswith("-") else f"{cur} {ln}".strip()
        if re.search(r"[.!?:][\"')\]]?$", ln) and len(ln) < 0.9 * width:
            blocks.append(cur)
            cur = ""
    return [" ".join(b.split()) for b in blocks + ([cur] if cur else [])]


_MD_SYNTAX = [
    (re.compile(r"!\[([^\]]*)\]\([^)]*\)"), r"\1"),  # images: their alt text
    (re.compile(r"\[([^\]]+)\]\([^)]*\)"), r"\1"),  # links: their text
    (re.compile(r"`([^`]*)`"), r"\1"),
    (re.compile(r"(\*\*|__|\*|_)(?=\S)(.+?)(?<=\S)\1"), r"\2"),
    (re.compile(r"^[ \t]{0,3}(?:[-*+]|\d+[.)])[ \t]+", re.MULTILINE), ""),  # list markers
    (re.compile(r"^[ \t]{0,3}>[ \t]?", re.MULTILINE), ""),  # quotes
]


def _markdown_blocks(text: str) -> list[str]:
    """Paragraphs of Markdown: front matter, code blocks, tables, headings and rules left out; links, emphasis and
    list markers reduced to their text. A heading ends a paragraph."""
    text = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.DOTALL)
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.DOTALL | re.MULTILINE)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.DOTALL)
    kept = []
    for line in text.splitlines():
        s = line.strip()
        if re.match(r"#{1,6}\s", s) or re.fullmatch(r"[-*_=]{3,}", s) or s.startswith("|"):
            kept.append("")  # a heading, a rule or a table row closes the paragraph
            continue
        kept.append(line)
    body = "\n".join(kept)
    for rx, repl in _MD_SYNTAX:
        body = rx.sub(repl, body)
    return _blocks(body)


class _HTMLText(html.parser.HTMLParser):
    """Text of block elements, one paragraph each; script, style, nav, header and footer skipped."""

    BLOCK = {"p", "div", "li", "td", "th", "pre", "blockquote", "section", "article", "dd", "dt", "br", "tr"}
    HEADING = {"h1", "h2", "h3", "h4", "h5", "h6", "title"}
    SKIP = {"script", "style", "nav", "header", "footer", "noscript", "template"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[str] = []
        self._cur: list[str] = []
        self._skip = 0

    def _close(self) -> None:
        text = " ".join("".join(self._cur).split())
        if text:
            self.blocks.append(text)
        self._cur = []

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self._skip += 1
        elif tag in self.BLOCK or tag in self.HEADING:
            self._close()

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in self.HEADING:
            self._cur = []  # a heading is not a passage
        elif tag in self.BLOCK:
            self._close()

    def handle_data(self, data):
        if not self._skip:
            self._cur.append(data)


def _html_blocks(text: str) -> list[str]:
    parser = _HTMLText()
    parser.feed(text)
    parser.close()
    parser._close()
    return parser.blocks


def _jsonl_paragraphs(path: Path) -> Iterator[tuple[int | None, int, str, str]]:
    """One paragraph per line: the first of JSONL_TEXT_FIELDS that is a string. A bad line is yielded with
    where = 'line N: reason' (read_documents rejects it); DocumentError when no line is usable."""
    usable = 0
    problems = []
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                problems.append(f"line {n}: invalid JSON ({exc}); expected one JSON object per line")
                yield None, n, raw.decode("utf-8", "replace").strip(), problems[-1]
                continue
            text = next(
                (obj[k] for k in JSONL_TEXT_FIELDS if isinstance(obj, dict) and isinstance(obj.get(k), str)), None
            )
            if text is None:
                problems.append(f"line {n}: no text field (expected a string in one of {', '.join(JSONL_TEXT_FIELDS)})")
                yield None, n, raw.decode("utf-8", "replace").strip(), problems[-1]
                continue
            usable += 1
            yield None, n, " ".join(text.split()), f"line {n}"
    if problems and not usable:
        raise DocumentError(
            f"{path}: {problems[0]}" + (f"; {len(problems) - 1} more such lines" if len(problems) > 1 else "")
        )
