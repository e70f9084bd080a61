"""Documents in: PDF (generated here, byte by byte), Markdown, text, HTML, JSONL -> passages with stable ids."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from realign.data.documents import DocumentError, document_files, read_documents, sentences

# Three pages of lecture notes: sentences with numbers, names and content words (the test documents of curation).
NOTES = [
    [
        "Gradient descent updates each weight in the direction that lowers the loss. The step size is called the "
        "learning rate, and a common starting value is 0.001 for the Adam optimizer. Too large a rate makes the "
        "loss diverge within 10 steps.",
        "Adam was introduced by Kingma and Ba in 2014. It keeps a running mean of the gradients and of their "
        "squares. The two decay rates are usually 0.9 and 0.999.",
        "Batch size trades speed against noise. A batch of 32 examples is a typical default on a single machine. "
        "Larger batches need a larger learning rate to train as fast.",
        "Overfitting happens when a model memorises its training data. Dropout switches off a random share of "
        "units during training, often 10 percent. Early stopping ends training when the validation loss stops "
        "improving.",
    ],
    [
        "The transformer architecture was proposed by Vaswani and colleagues in 2017. It replaced recurrence with "
        "attention over every position of the sequence. The original model had 6 encoder layers and 6 decoder "
        "layers.",
        "Attention compares a query with every key and mixes the values by the resulting weights. The weights come "
        "from a softmax over scaled dot products. Scaling by the square root of the key size keeps the softmax "
        "from saturating.",
        "Tokenizers split text into pieces from a fixed vocabulary. Byte pair encoding merges the most frequent "
        "pair of symbols again and again. GPT-2 used a vocabulary of 50257 tokens.",
        "Positional information is added because attention itself ignores order. Rotary embeddings rotate queries "
        "and keys by an angle that grows with position. Llama models use rotary embeddings in every layer.",
    ],
    [
        "Direct preference optimisation trains a policy on pairs of chosen and rejected answers. It needs no "
        "separate reward model during training. The strength of the constraint is set by a parameter called beta, "
        "often 0.1.",
        "A reward model scores an answer with a single number. It is trained so that the chosen answer of a pair "
        "scores higher than the rejected one. Its accuracy on held-out pairs should reach 70 percent before it is "
        "used.",
        "The KL divergence measures how far the policy has moved from the reference model. Realignment runs "
        "usually keep it below 0.1 nats per token. A larger value often means the policy has found a way to "
        "exploit the reward.",
        "Evaluation compares the aligned model with the model it started from. Capability retention should stay "
        "above 95 percent of the baseline score. Held-out questions must not appear in the training data.",
    ],
]


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def make_pdf(path: Path, pages: list[list[str]], width: int = 70) -> Path:
    """A minimal valid PDF 1.4 written by hand: one Helvetica text stream per page, each paragraph wrapped at
    `width` characters with an empty line after it; the xref table holds the real byte offsets."""
    n = len(pages)
    font = 3 + 2 * n
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    objs.append(f"<< /Type /Pages /Kids [{' '.join(f'{3 + 2 * i} 0 R' for i in range(n))}] /Count {n} >>".encode())
    for i, paragraphs in enumerate(pages):
        ops = ["BT", "/F1 11 Tf", "14 TL", "50 780 Td"]
        for p in paragraphs:
            ops += [f"({_esc(line)}) Tj T*" for line in textwrap.wrap(p, width)] + ["T*"]
        stream = "\n".join([*ops, "ET"]).encode("latin-1")
        objs.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 {font} 0 R >> >> "
            f"/Contents {4 + 2 * i} 0 R >>".encode()
        )
        objs.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objs.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for k, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += f"{k} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(out))
    return path


def make_markdown_folder(folder: Path, pages: list[list[str]] = NOTES) -> Path:
    """One Markdown file per page: front matter, a heading, paragraphs (one as a list item), a code block."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, paragraphs in enumerate(pages, start=1):
        body = [f"---\ntitle: part {i}\n---", f"# Part {i}"]
        body += [("- " if j == 1 else "") + p for j, p in enumerate(paragraphs)]
        body += ["```python\nprint('not a passage, however long this line of code may be')\n```"]
        (folder / f"part{i}.md").write_text("\n\n".join(body) + "\n")
    return folder


def test_a_generated_pdf_reads_into_passages_by_page_and_paragraph(tmp_path):
    pdf = make_pdf(tmp_path / "notes.pdf", NOTES)
    docs = read_documents([pdf])
    assert [p.id for p in docs.passages[:5]] == ["notes:p1:1", "notes:p1:2", "notes:p1:3", "notes:p1:4", "notes:p2:1"]
    assert len(docs.passages) == 12 and docs.rejects == [] and docs.files == [str(pdf)]
    first = docs.passages[0]
    assert (first.page, first.paragraph, first.source) == (1, 1, str(pdf))
    # lines wrapped in the PDF are joined back into the paragraph's text
    assert first.text == NOTES[0][0]
    assert docs.passages[-1].text == NOTES[2][3] and docs.passages[-1].id == "notes:p3:4"
    # stable: the same file gives the same ids, also when another document is read with it
    other = tmp_path / "other.txt"
    other.write_text("An unrelated paragraph with more than six words in it.\n")
    again = read_documents([other, pdf])
    assert [p.id for p in again.passages if p.source == str(pdf)] == [p.id for p in docs.passages]


def test_a_pdf_without_text_or_not_a_pdf_is_a_clear_error(tmp_path):
    with pytest.raises(DocumentError, match=r"scan\.pdf: no text in its 1 page\(s\).*OCR"):
        read_documents([make_pdf(tmp_path / "scan.pdf", [[]])])
    bad = tmp_path / "broken.pdf"
    bad.write_bytes(b"this is not a PDF at all")
    with pytest.raises(DocumentError, match=r"broken\.pdf: not a readable PDF"):
        read_documents([bad])


def test_markdown_keeps_prose_and_drops_front_matter_code_and_headings(tmp_path):
    md = tmp_path / "guide.md"
    md.write_text(
        "---\ntitle: Guide\n---\n# Setting up\n\nInstall the **package** with [pip](https://pypi.org) and run "
        "`realign doctor` once.\n\n```bash\npip install realign and some other words here\n```\n\n"
        "- The first run builds a tiny model in about 5 seconds.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    )
    docs = read_documents([md])
    assert [(p.id, p.text) for p in docs.passages] == [
        ("guide:1", "Install the package with pip and run realign doctor once."),
        ("guide:2", "The first run builds a tiny model in about 5 seconds."),
    ]


def test_html_text_and_jsonl_sources(tmp_path):
    page = tmp_path / "faq.html"
    page.write_text(
        "<html><head><title>FAQ</title><script>var x = 'not text at all, a script';</script></head><body>"
        "<nav>Home About Contact Pricing Blog Careers Login</nav><h1>Questions</h1>"
        "<p>Refunds are paid within 14 days of the request &amp; no fee is charged.</p>"
        "<ul><li>Support answers emails on weekdays between 9 and 17 o'clock.</li></ul></body></html>"
    )
    text = tmp_path / "notes.txt"
    text.write_text("Short.\n\nThe second paragraph\nspans two lines of the plain text file.\n")
    rows = tmp_path / "kb.jsonl"
    rows.write_text(
        json.dumps({"text": "The warranty covers parts and labour for 24 months."})
        + "\n{broken json\n"
        + json.dumps({"title": "no text field here"})
        + "\n"
        + json.dumps({"text": "  "})
        + "\n"
    )
    docs = read_documents([page, text, rows])
    assert [(p.id, p.text) for p in docs.passages] == [
        ("faq:1", "Refunds are paid within 14 days of the request & no fee is charged."),
        ("faq:2", "Support answers emails on weekdays between 9 and 17 o'clock."),
        ("notes:2", "The second paragraph spans two lines of the plain text file."),
        ("kb:1", "The warranty covers parts and labour for 24 months."),
    ]
    reasons = {(Path(r["file"]).name, r["where"]): r["reason"] for r in docs.rejects}
    assert reasons[("notes.txt", "paragraph 1")].startswith("1 words (fewer than 6)")
    assert reasons[("kb.jsonl", "line 2")].startswith("invalid JSON")
    assert "no text field (expected a string in one of text, content" in reasons[("kb.jsonl", "line 3")]
    assert reasons[("kb.jsonl", "line 4")] == "no text"  # an empty text is kept with its reason, not dropped


def test_jsonl_without_any_text_names_the_file_and_line(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(DocumentError, match=r"rows\.jsonl: line 1: no text field"):
        read_documents([rows])


def test_duplicates_across_files_are_rejected_with_the_id_they_repeat(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "sub" / "b.txt"
    b.parent.mkdir()
    a.write_text("The same paragraph appears in two documents here.\n\nOnly in the first document, this one.\n")
    b.write_text("The  same paragraph appears in TWO documents here.\n")
    docs = read_documents([tmp_path])
    assert [p.id for p in docs.passages] == ["a:1", "a:2"]
    assert docs.rejects == [
        {
            "file": str(b),
            "where": "paragraph 1",
            "reason": "duplicate of passage a:1",
            "text": "The same paragraph appears in TWO documents here.",
        }
    ]


def test_long_paragraphs_are_cut_at_sentence_ends_with_part_ids(tmp_path):
    long = " ".join(f"Sentence number {i} of a very long paragraph says something." for i in range(30))
    f = tmp_path / "a_rather_long_document_name_indeed.txt"
    f.write_text(long)
    docs = read_documents([f], max_chars=200)
    assert len(docs.passages) > 5 and all(len(p.text) <= 200 for p in docs.passages)
    assert docs.passages[0].id == "a_rather_long_document_n:1.1" and docs.passages[1].id.endswith(":1.2")
    assert " ".join(p.text for p in docs.passages) == long
    assert max(len(p.id) for p in docs.passages) <= 40  # a grounded citation's limit
    assert sentences("It is 3.5 m long. Then it ends! OK") == ["It is 3.5 m long.", "Then it ends!", "OK"]


def test_paths_that_cannot_be_read_say_what_to_do(tmp_path):
    with pytest.raises(DocumentError, match=r"missing\.pdf: no such file or folder"):
        document_files([tmp_path / "missing.pdf"])
    (tmp_path / "slides.pptx").write_bytes(b"PK")
    with pytest.raises(DocumentError, match=r"unsupported document type '\.pptx'.*convert it"):
        document_files([tmp_path / "slides.pptx"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DocumentError, match="folder has no documents"):
        document_files([tmp_path / "empty"])
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait, with more words".encode("latin-1"))
    with pytest.raises(DocumentError, match=r"latin\.txt: invalid UTF-8 at byte 4.*re-save it as UTF-8"):
        read_documents([latin])
    # hidden files and other types inside a folder are left out
    folder = make_markdown_folder(tmp_path / "kb", NOTES[:1])
    (folder / ".draft.md").write_text("A hidden draft that should never be read by anyone.")
    (folder / "image.png").write_bytes(b"\x89PNG")
    assert [f.name for f in document_files([folder])] == ["part1.md"]
