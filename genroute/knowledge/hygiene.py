"""Defusing untrusted text (retrieved chunks, stored few-shot examples) before it enters a prompt.

Such text is data. It must not be able to close the block it is quoted in, open another, or pose as
a turn of the conversation: ``<document>`` delimiters and chat-template markers (Gemma's
``<start_of_turn>``/``<end_of_turn>``) lose their ``<``, and a line (after any line break) that starts like a transcript
turn or an example field (``User:``, ``Assistant:``, ``Function result (f):``, ``Input:``, ``Output:``...) gets a
backslash in front, so the local engine's transcript and the ``text`` example format cannot be forged from inside.
Both are matched on a folded view of the text: invisible characters (every format character such as zero-width
spaces, bidi controls, the soft hyphen and tag characters, and variation selectors; control characters that are not
blanks or line breaks, such as NUL, ESC, DEL and the unit separator (the file, group and record separators and
NEL, line breaks to ``str.splitlines``, are looked past too); unassigned, private-use and surrogate code points: a
model reads past each, so ``<\\x00/answer>`` closes a block as ``</answer>`` does) are skipped wherever they stand,
and compatibility forms are NFKC-folded, so ``\\u200eUser:``, ``U\\u200bser:``, ``Function\\xa0result``, full-width
``Ｕｓｅｒ：`` and ``＜/document>`` are all caught, and so are Cyrillic and Greek look-alike letters (``Usеr:`` with a
Cyrillic ``е``, a small explicit map: NFKC does not fold across scripts). The words themselves stay readable: the model sees what the
data says, not an instruction slot.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

_TAG_NAMES = ("document", "start_of_turn", "end_of_turn")


@lru_cache(maxsize=32)
def _tags(extra: tuple[str, ...]) -> re.Pattern[str]:
    """Opening or closing delimiters named ``document``, a chat-template marker or one of ``extra``."""
    # Folded as the text they are looked for in is (``_fold``): ``<ответ>``'s Cyrillic look-alikes read as Latin.
    names = "|".join(re.escape(_fold(name)[0]) for name in (*_TAG_NAMES, *extra))
    # (?!\w), not \b: a name may end in "-" or "." (``<ns:answer.>``), after which \b would need a letter.
    return re.compile(rf"<\s*/?\s*(?:{names})(?!\w)", re.IGNORECASE)


#: A tag as a model reads one: any letters (``<ответ>``), ``-``, ``.`` and ``:`` in its name (``<ns:answer>``),
#: attributes or blanks before its ``>`` (``<answer id=1>``, ``</answer >``).
_TAG_NAME = re.compile(r"<\s*/?\s*([^\W\d][\w.:-]*)(?=[\s/>])")


def tag_names(prompt: str) -> tuple[str, ...]:
    """Names of the tags ``prompt`` quotes its parts in (``<answer>``...), for ``defuse(..., tags=...)``."""
    return tuple(sorted({name.lower() for name in _TAG_NAME.findall(prompt)}))
#: A line starts after any break ``str.splitlines`` knows (``\r``, U+2028... not just ``\n``), past blanks.
_BREAK = "\n\r\v\f\x1c-\x1e\x85\u2028\u2029"
_SPACE = rf"[^\S{_BREAK}]"
#: Colons after NFKC folding: ``:`` (full-width and small colons fold to it) and look-alikes that do not fold.
_COLON = "[:\u02d0\u02f8\u0589\u2236\ua789]"
_TURN_LINES = re.compile(
    rf"(?:^|(?<=[{_BREAK}])){_SPACE}*"
    rf"(?=(?:user|assistant|model|system|function{_SPACE}+(?:call|result)|input|output){_SPACE}*"
    rf"(?:\([^{_BREAK}]*\){_SPACE}*)?{_COLON})",  # "Function result (name):" is a local-engine turn
    re.IGNORECASE,
)
#: Cyrillic and Greek letters that look like the Latin ones of the words above (NFKC keeps scripts apart, so
#: ``Usеr:`` with a Cyrillic ``е`` would pass): read as those Latin letters when matching.
_LOOK_ALIKES = str.maketrans(
    "аАВсСеЕһНіІӏӀјЈкКмМоОрРѕЅтТуУхХԁԛԝѵ"  # Cyrillic
    "αΑΒεΕΗιΙκΚΜνΝοΟρΡτΤυΥχΧϳ",  # Greek (after NFKC: its mathematical letters fold to these)
    "aABcCeEhHiIlIjJkKmMoOpPsStTyYxXdqwv"
    "aABeEHiIkKMvNoOpPtTuYxXj",
)
#: Invisible characters outside category C (``_skipped``): combining grapheme joiner, variation selectors, Hangul
#: fillers.
_INVISIBLE = re.compile("[\u034f\u115f\u1160\u180b-\u180f\u3164\ufe00-\ufe0f\uffa0\U000e0100-\U000e01ef]")
#: The controls ``_fold`` keeps: the blank and the line breaks the rules match as such (``_SPACE``, ``_BREAK``).
#: ``\x1f`` (unit separator) is not one, though ``\s`` matches it: a model reads past it as past ESC.
_KEPT_CONTROLS = frozenset("\t\n\v\f\r\x1c\x1d\x1e\x85")
#: The kept controls that are line breaks to ``str.splitlines`` alone (file, group and record separators, NEL).
_SEPARATOR_CHARS = "\x1c\x1d\x1e\x85"
_SEPARATORS = re.compile(f"[{_SEPARATOR_CHARS}]")
#: The ASCII characters ``_fold`` skips: the controls it does not keep, and DEL.
_ASCII_SKIPPED = re.compile("[\x00-\x08\x0e-\x1b\x1f\x7f]")


def defuse(text: str, *, tags: tuple[str, ...] = ()) -> str:
    """``text`` with document delimiters (and those named in ``tags``, such as a judge prompt's ``<answer>``) and
    chat-template turn markers defused (``<`` → ``&lt;``), and lines that look like a turn or an example field escaped
    with ``\\``: the one defuse for every untrusted text (retrieved chunks, stored examples and what a judge reads
    alike), whatever engine the prompt goes to."""
    lts: set[int] = set()
    turns: set[int] = set()
    # The separators (``\x1c``-``\x1e``, NEL) break lines to ``str.splitlines`` and the turn rule, but a model reads
    # past one inside a word as past ESC: looked for both ways, ``</an\x1cswer>`` and ``\x1cUser:`` are each caught.
    for skip in (False, True) if _SEPARATORS.search(text) else (False,):
        folded, origin = _fold(text, separators=skip)
        lts.update(origin[m.start()] for m in _tags(tags).finditer(folded))
        turns.update(origin[m.end()] for m in _TURN_LINES.finditer(folded))
    if not lts and not turns:
        return text
    out = []
    for i, char in enumerate(text):
        if i in turns:
            out.append("\\")
        out.append("&lt;" if i in lts else char)
    return "".join(out)


def _fold(text: str, *, separators: bool = False) -> tuple[str, list[int]]:
    """``text`` without invisible characters (and without ``_SEPARATORS`` if ``separators``) and NFKC-folded
    character by character, and for each character of that the index in ``text`` it came from (plus one past the
    end, for a match that ends there)."""
    if text.isascii() and not separators and not _ASCII_SKIPPED.search(text):  # nothing to skip or fold
        return text, list(range(len(text) + 1))
    chars: list[str] = []
    origin: list[int] = []
    for i, char in enumerate(text):
        if _skipped(char) or (separators and char in _SEPARATOR_CHARS):
            continue
        for piece in unicodedata.normalize("NFKC", char).translate(_LOOK_ALIKES):
            chars.append(piece)
            origin.append(i)
    origin.append(len(text))
    return "".join(chars), origin


def _skipped(char: str) -> bool:
    """Whether a model reads past ``char``: category C (format, control, unassigned, private use, surrogate) but
    the blank and line breaks among the controls (tab, newline: ``_KEPT_CONTROLS``), and ``_INVISIBLE``."""
    return (unicodedata.category(char)[0] == "C" and char not in _KEPT_CONTROLS) or _INVISIBLE.match(char) is not None
