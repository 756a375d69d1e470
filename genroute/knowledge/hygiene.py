"""Defusing untrusted text (retrieved chunks, stored few-shot examples) before it enters a prompt.

Such text is data. It must not be able to close the block it is quoted in, open another, or pose as
a turn of the conversation: ``<document>`` delimiters and chat-template markers (Gemma's
``<start_of_turn>``/``<end_of_turn>``) lose their ``<``, and a line (after any line break) that starts like a transcript
turn or an example field (``User:``, ``Assistant:``, ``Input:``, ``Output:``...) gets a backslash in
front, so the local engine's transcript and the ``text`` example format cannot be forged from inside.
The words themselves stay readable: the model sees what the data says, not an instruction slot.
"""

from __future__ import annotations

import re

_TAGS = re.compile(r"<\s*/?\s*(?:document|start_of_turn|end_of_turn)\b", re.IGNORECASE)
#: A line starts after any break ``str.splitlines`` knows (``\r``, U+2028... not just ``\n``), past blanks and
#: zero-width characters; a full-width colon counts as a colon.
_BREAK = "\n\r\v\f\x1c-\x1e\x85\u2028\u2029"
_TURN_LINES = re.compile(
    rf"(?:^|(?<=[{_BREAK}]))((?:[^\S{_BREAK}]|[\u200b-\u200d\u2060\ufeff])*)"
    rf"(?=(?:user|assistant|model|system|function call|function result|input|output)[^\S{_BREAK}]*"
    rf"(?:\([^{_BREAK})]*\)[^\S{_BREAK}]*)?[:\uff1a])",  # "Function result (name):" is a local-engine turn
    re.IGNORECASE,
)


def defuse(text: str) -> str:
    """``text`` with document delimiters and chat-template turn markers defused (``<`` → ``&lt;``), and lines
    that look like a turn or an example field escaped with ``\\``: the one defuse for every untrusted text
    (retrieved chunks and stored examples alike), whatever engine the prompt goes to."""
    tags = _TAGS.sub(lambda m: m.group(0).replace("<", "&lt;"), text)
    return _TURN_LINES.sub(lambda m: m.group(1) + "\\", tags)
