"""Untrusted text inside the app's Markdown: DICOM tags, label names, checkpoint metadata, file names, messages.

Streamlit renders Markdown in `st.markdown`, alerts, captions and progress text, so a Modality of
`![x](https://tracker/)` would make every viewer's browser fetch that URL. `text()` escapes every
character Markdown gives a meaning (CommonMark lets any ASCII punctuation be backslash-escaped, and it
then renders as itself); `document()` keeps a trusted document's layout (headings, tables, lists,
bold) but disarms links, images, raw HTML and formulas in it.
"""

from __future__ import annotations

import re

__all__ = ["document", "text"]

_INLINE = re.compile(r"([\\`*_{}\[\]()#+\-!|<>$~])")
_DOCUMENT = re.compile(r"([\\\[\]<$])")


def text(value: object) -> str:
    """`value` as Markdown that shows exactly its characters on one line: nothing in it is markup."""
    return _INLINE.sub(r"\\\1", " ".join(str(value).split()))


def document(markdown: str) -> str:
    """A Markdown document with its links, images, autolinks, HTML and formulas shown as plain text."""
    return _DOCUMENT.sub(r"\\\1", markdown)
