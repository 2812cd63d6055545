"""textkit: first-party plugins for text corpora, and the demo pipeline that uses them.

Loaded by every worker through the ``dagworker.plugins`` entry point. No network is needed: the
demo corpus ships in ``data/corpus.txt``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from dagworker import TaskContext, plugin

_HEADING = re.compile(r"^=== (.+?) ===\s*$")
_WORD = re.compile(r"[a-z']+")
_SENTENCE_END = re.compile(r"[.!?]+")
STOPWORDS = frozenset(
    [
        "the",
        "a",
        "of",
        "and",
        "to",
        "in",
        "is",
        "it",
        "that",
        "on",
        "was",
        "with",
        "as",
        "for",
        "by",
        "at",
        "from",
        "this",
        "be",
        "are",
    ]
)
WORDS_PER_MINUTE = 230


def bundled_corpus() -> str:
    return str(resources.files("dagworker_textkit").joinpath("data/corpus.txt"))


def demo_pipeline_path() -> str:
    return str(resources.files("dagworker_textkit").joinpath("demo.yaml"))


@plugin(
    "split_corpus", description="Split a corpus file ('=== title ===' headings) into documents."
)
def split_corpus(
    ctx: TaskContext, path: str = "", max_docs: int = 10_000
) -> Iterator[dict[str, Any]]:
    source = Path(path or bundled_corpus())
    title: str | None = None
    lines: list[str] = []
    emitted = 0

    def document() -> dict[str, Any]:
        return {
            "doc_id": f"doc-{emitted + 1:04d}",
            "title": title,
            "text": "\n".join(lines).strip(),
        }

    with source.open(encoding="utf-8") as handle:
        for line in handle:
            match = _HEADING.match(line)
            if match:
                if title is not None and emitted < max_docs:
                    yield document()
                    emitted += 1
                title, lines = match.group(1), []
            else:
                lines.append(line.rstrip("\n"))
    if title is not None and emitted < max_docs:
        yield document()


@plugin("analyse_document", description="Word, sentence and keyword statistics of one document.")
def analyse_document(ctx: TaskContext, top: int = 5) -> dict[str, Any]:
    doc = ctx.artifact or {}
    text = str(doc.get("text", ""))
    words = _WORD.findall(text.lower())
    content = Counter(w for w in words if w not in STOPWORDS)
    sentences = [s for s in _SENTENCE_END.split(text) if s.strip()]
    return {
        "doc_id": doc.get("doc_id"),
        "title": doc.get("title"),
        "words": len(words),
        "sentences": len(sentences),
        "avg_sentence_words": round(len(words) / len(sentences), 2) if sentences else 0.0,
        "reading_minutes": round(len(words) / WORDS_PER_MINUTE, 2),
        "keywords": [w for w, _ in content.most_common(top)],
        "counts": dict(content.most_common(top * 4)),
    }


@plugin("aggregate_stats", description="Corpus totals and keywords over analysed documents.")
def aggregate_stats(ctx: TaskContext, top: int = 10) -> dict[str, Any]:
    docs = sorted(ctx.artifacts, key=lambda d: str(d.get("doc_id")))
    totals: Counter[str] = Counter()
    for doc in docs:
        totals.update(doc.get("counts", {}))
    words = sum(int(d.get("words", 0)) for d in docs)
    longest = max(docs, key=lambda d: int(d.get("words", 0)), default=None)
    return {
        "documents": len(docs),
        "words": words,
        "sentences": sum(int(d.get("sentences", 0)) for d in docs),
        "keywords": [w for w, _ in totals.most_common(top)],
        "longest": longest
        and {"doc_id": longest["doc_id"], "title": longest["title"], "words": longest["words"]},
        "per_document": [
            {
                "doc_id": d["doc_id"],
                "title": d["title"],
                "words": d["words"],
                "keywords": d["keywords"],
            }
            for d in docs
        ],
    }


@plugin("write_report", description="Write a Markdown report (and JSON beside it).")
def write_report(ctx: TaskContext, out_dir: str = "") -> dict[str, Any]:
    stats = ctx.artifact or (ctx.artifacts[0] if ctx.artifacts else {})
    folder = Path(out_dir or ctx.input.get("out_dir") or "dagworker-demo-output")
    folder.mkdir(parents=True, exist_ok=True)
    report = folder / f"report-{ctx.run_id}.md"
    lines = [
        f"# Corpus report ({ctx.pipeline}, run {ctx.run_id})",
        "",
        f"- documents: {stats.get('documents', 0)}",
        f"- words: {stats.get('words', 0)}",
        f"- sentences: {stats.get('sentences', 0)}",
        f"- top keywords: {', '.join(stats.get('keywords', []))}",
        "",
        "| document | title | words | keywords |",
        "|---|---|---|---|",
    ]
    for row in stats.get("per_document", []):
        lines.append(
            f"| {row['doc_id']} | {row['title']} | {row['words']} | {', '.join(row['keywords'])} |"
        )
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / f"report-{ctx.run_id}.json").write_text(json.dumps(stats, indent=2), encoding="utf-8")
    return {"path": str(report.resolve()), "documents": stats.get("documents", 0)}


@write_report.rollback
def remove_report(ctx: TaskContext) -> None:
    for artifact in ctx.outputs:
        path = Path(artifact["path"])
        path.unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)
