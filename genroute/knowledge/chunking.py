"""Token-aware chunking with overlap, and the token counter RAG and ICL budgets use.

Counting uses the MiniLM WordPiece tokenizer shipped with the offline embedder: it is what the
local embedder truncates by, and a fair stand-in for other models' counts when budgeting prompts.
Without that package a whitespace/punctuation splitter stands in (never a download).

A word WordPiece cannot split (Thai and other unspaced scripts, emoji) comes back as one ``[UNK]`` whatever its
length; such a span is counted, split and truncated as pieces of about ``CHARS_PER_TOKEN`` characters instead, so
no text slips past a token budget as "one token". A word over 100 characters (a hash, base64, a long URL path) is
also one ``[UNK]``: it is encoded in slices of 100 characters instead, with WordPiece's own pieces and offsets.
"""

from __future__ import annotations

import hashlib
import re
import threading
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

from genroute.bounds import is_whole
from genroute.errors import ConfigError
from genroute.runtime.billing import CHARS_PER_TOKEN

_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)
# WordPiece's max_input_chars_per_word: a longer word becomes one [UNK] (the fallback splitter treats it alike).
_MAX_WORD = 100
# Characters that belong to the one before them: a cut just before one would change that character.
_JOINERS = frozenset("\u200c\u200d\ufe0e\ufe0f")
# Where a chunk may end without cutting a sentence: after . ! ? before a space, after a CJK 。！？ (no space follows
# them) and the closing quotes or brackets after it, or at a newline.
_CLOSERS = "」』）〕】》〉”’\"'"
#: Characters tokenized at a time when chunking: a 6 MB file tokenized whole held ~1.1 GB of offsets at once.
SEGMENT_CHARS = 1 << 16
_SENTENCE_END = re.compile(rf"[.!?](?=\s)|[。！？｡](?=[^{_CLOSERS}])|(?<=[。！？｡])[{_CLOSERS}]+(?=[^{_CLOSERS}])|\n")


class TokenCounter:
    """Splits text into tokens with character offsets (MiniLM WordPiece, or a regex fallback)."""

    def __init__(self) -> None:
        self._tokenizer: Any = None
        self._lock = threading.Lock()
        self._loaded = False

    def _load(self) -> Any:
        with self._lock:
            if not self._loaded:
                try:
                    from tokenizers import Tokenizer

                    from genroute.knowledge.embedders import tokenizer_file

                    tokenizer = Tokenizer.from_file(str(tokenizer_file()))
                    tokenizer.no_truncation()
                    tokenizer.no_padding()
                    self._tokenizer = tokenizer
                except (ImportError, ConfigError, OSError):
                    self._tokenizer = None
                self._loaded = True
        return self._tokenizer

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Character ``(start, end)`` of every token in ``text`` (an unknown word: one per few characters)."""
        return self.pieces(text)[0]

    def pieces(self, text: str) -> tuple[list[tuple[int, int]], list[bool]]:
        """``offsets(text)``, and for each token whether it is a piece of a word WordPiece could not split whole (a
        text cut inside such a word may recount otherwise: its slices or its unknown run begin elsewhere)."""
        return self._pieces(text, 0, len(text))

    def segment_pieces(self, text: str) -> Iterator[tuple[list[tuple[int, int]], list[bool]]]:
        """``pieces(text)`` a segment of about ``SEGMENT_CHARS`` characters at a time (offsets into ``text``), each
        cut after a space or newline, where no token can change (words are split there whatever surrounds them)."""
        start = 0
        while start < len(text):
            end = len(text)
            if start + SEGMENT_CHARS < end:
                at = max(text.rfind(" ", start, start + SEGMENT_CHARS), text.rfind("\n", start, start + SEGMENT_CHARS))
                if at <= start:  # no break in the segment: on to the next one (a segment is never cut in a word)
                    at = min((i for i in (text.find(" ", start + SEGMENT_CHARS), text.find("\n", start + SEGMENT_CHARS))
                              if i >= 0), default=end - 1)
                end = at + 1
            yield self._pieces(text, start, end)
            start = end

    def _pieces(self, text: str, start: int, end: int) -> tuple[list[tuple[int, int]], list[bool]]:
        tokenizer = self._load()
        if tokenizer is None:
            tokens = [(m.span(), m.end() - m.start() > _MAX_WORD) for m in _WORD.finditer(text, start, end)]
        else:
            tokens = self._wordpieces(tokenizer, text[start:end], start)
        spans: list[tuple[int, int]] = []
        cut: list[bool] = []
        for span, unknown in tokens:
            if not unknown:
                found = [span]
            elif tokenizer is not None and span[1] - span[0] > _MAX_WORD:
                found = self._long_word(tokenizer, text, *span)
            else:
                found = _char_spans(text, *span)
            spans += found
            cut += [unknown] * len(found)
        return spans, cut

    @staticmethod
    def _wordpieces(tokenizer: Any, text: str, base: int) -> list[tuple[tuple[int, int], bool]]:
        """WordPiece's ``((start, end), unknown)`` tokens of ``text``, offsets shifted by ``base``."""
        encoding = tokenizer.encode(text, add_special_tokens=False)
        unk = tokenizer.token_to_id(tokenizer.model.unk_token)
        return [((base + a, base + b), i == unk) for (a, b), i in zip(encoding.offsets, encoding.ids) if b > a]

    def _long_word(self, tokenizer: Any, text: str, start: int, end: int) -> list[tuple[int, int]]:
        """The tokens of a word too long for WordPiece (a hash, base64, minified code): its slices of ``_MAX_WORD``
        characters as WordPiece splits them (about 2.6 times as many tokens as 4-character pieces would be); the
        runs of slices that still come back unknown (an unspaced script, emoji) in pieces of a few characters."""
        tokens: list[tuple[tuple[int, int], bool]] = []
        for cut in range(start, end, _MAX_WORD):
            tokens += self._wordpieces(tokenizer, text[cut:min(cut + _MAX_WORD, end)], cut)
        spans: list[tuple[int, int]] = []
        unknown_from: int | None = None  # where the current run of unknown slices began
        for (a, b), unknown in tokens + [((end, end), False)]:
            if unknown:
                unknown_from = a if unknown_from is None else unknown_from
                continue
            if unknown_from is not None:  # one run, split as a whole: the pieces the whole word gave before
                spans += _char_spans(text, unknown_from, a)
                unknown_from = None
            if b > a:
                spans.append((a, b))
        return spans

    def count(self, text: str) -> int:
        """Number of tokens in ``text``."""
        return len(self.offsets(text))


def _char_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """``text[start:end]`` as pieces of about ``CHARS_PER_TOKEN`` characters, none cut before a mark or joiner."""
    spans = []
    while start < end:
        cut = _extend(text, min(start + CHARS_PER_TOKEN, end), end, joined=True)
        spans.append((start, cut))
        start = cut
    return spans


def _extend(text: str, end: int, limit: int, *, joined: bool = False) -> int:
    """``end`` moved (up to ``limit``) past the combining marks, joiners and variation selectors that belong before
    it, and with ``joined`` past a character a zero-width joiner ties to the one before (an emoji sequence)."""
    while end < limit and (_attached(text[end]) or (joined and text[end - 1] == "\u200d")):
        end += 1
    return end


def _attached(char: str) -> bool:
    return char in _JOINERS or unicodedata.category(char).startswith("M")


@lru_cache(maxsize=1)
def token_counter() -> TokenCounter:
    """The process-wide token counter."""
    return TokenCounter()


@dataclass(frozen=True)
class Chunk:
    """A piece of a document: its text, where it came from, and its content-derived id."""

    text: str
    start: int
    end: int
    tokens: int

    @property
    def id(self) -> str:
        """Stable id from the content alone, so re-ingesting the same text upserts, never duplicates."""
        return chunk_id(self.text)


def chunk_id(text: str) -> str:
    """The id of a chunk with this text (SHA-256 of the whitespace-normalised text, 32 hex digits)."""
    normal = " ".join(text.split())
    return hashlib.sha256(normal.encode("utf-8")).hexdigest()[:32]


def stored_chunk_id(source: str, text: str) -> str:
    """The id a document chunk is stored under: its source and its content.

    Keyed by source too, so that re-ingesting an edited file can drop that file's old chunks without touching a
    chunk another file shares.
    """
    return chunk_id(f"{source}\x00{text}")


def chunk_text(
    text: str,
    *,
    chunk_tokens: int = 200,
    overlap: int = 40,
    counter: TokenCounter | None = None,
    base_offset: int = 0,
) -> list[Chunk]:
    """Split ``text`` into windows of at most ``chunk_tokens`` tokens; consecutive windows share up to ``overlap``.

    A window ends at the last sentence boundary in its second half when there is one, so chunks
    rarely cut a sentence. Offsets are character offsets into ``text`` plus ``base_offset``.
    """
    return list(iter_chunks(text, chunk_tokens=chunk_tokens, overlap=overlap, counter=counter,
                            base_offset=base_offset))


def iter_chunks(text: str, *, chunk_tokens: int = 200, overlap: int = 40, counter: TokenCounter | None = None,
                base_offset: int = 0) -> Iterator[Chunk]:
    """``chunk_text``'s chunks one at a time, as they are cut (the bad settings refused before the first)."""
    check_window(chunk_tokens, overlap)
    return _chunks(text, chunk_tokens, overlap, counter or token_counter(), base_offset)


def check_window(chunk_tokens: int, overlap: int) -> None:
    """``ConfigError`` naming ``chunk_tokens`` or ``overlap`` unless they are whole numbers, 8 <= chunk_tokens and
    0 <= overlap < chunk_tokens."""
    for name, value in (("chunk_tokens", chunk_tokens), ("overlap", overlap)):
        if not is_whole(value):  # "200" was a TypeError
            raise ConfigError(f"must be a whole number, got {value!r:.40}", field=name)
    if chunk_tokens < 8:
        raise ConfigError("must be at least 8", field="chunk_tokens")
    if not 0 <= overlap < chunk_tokens:
        raise ConfigError(f"must be at least 0 and less than chunk_tokens ({chunk_tokens})", field="overlap")


def _chunks(text: str, chunk_tokens: int, overlap: int, counter: TokenCounter, base_offset: int) -> Iterator[Chunk]:
    spans = _Tokens(counter.segment_pieces(text))
    i = 0
    while spans.load(i + chunk_tokens + 1) > i:  # the window, and the token after it (where its text ends)
        j = min(i + chunk_tokens, len(spans))
        if j < len(spans):
            j = _mark_cut(text, spans, i, _sentence_cut(text, spans, i, j))
        if spans.unknown(i) or spans.unknown(j - 1):  # begins or ends inside a word WordPiece could not split whole
            j = _fit(text, spans, i, j, chunk_tokens, counter)
        start, end = spans[i][0], _end(text, spans, j)
        piece = text[start:end].strip()
        if piece:
            yield Chunk(piece, base_offset + start, base_offset + end, j - i)
        if j >= len(spans):
            break
        # Advance at least half a window, so large overlaps and early sentence cuts cannot crawl.
        i = max(j - overlap, i + max(1, (j - i) // 2))
        while i < j and _attached(text[spans[i][0]]):
            i += 1  # a chunk starts with a whole character, never with a mark of the one before
        spans.forget(i)


class _Spans(Protocol):
    def __getitem__(self, k: int) -> tuple[int, int]: ...

    def __len__(self) -> int: ...


class _Tokens:
    """A text's token offsets, tokenized a segment at a time as the chunker reaches them, and forgotten once it is
    past them (indexes stay the whole text's). ``len`` is how many are loaded: all of them once ``load`` came short."""

    def __init__(self, segments: Iterator[tuple[list[tuple[int, int]], list[bool]]]) -> None:
        self._segments = segments
        self._spans: list[tuple[int, int]] = []
        self._unknown: list[bool] = []
        self._base = 0  # the index of _spans[0]

    def load(self, n: int) -> int:
        """Load tokens until there are ``n`` (or the text ends); how many there are."""
        while len(self) < n:
            segment = next(self._segments, None)
            if segment is None:
                break
            self._spans += segment[0]
            self._unknown += segment[1]
        return len(self)

    def forget(self, i: int) -> None:
        """Drop the tokens before ``i`` (in steps, so that dropping costs little)."""
        if i - self._base > SEGMENT_CHARS // 4:
            del self._spans[:i - self._base], self._unknown[:i - self._base]
            self._base = i

    def unknown(self, k: int) -> bool:
        """Whether token ``k`` is a piece of a word WordPiece could not split whole."""
        return self._unknown[k - self._base]

    def __getitem__(self, k: int) -> tuple[int, int]:
        if k < self._base:
            raise IndexError(k)
        return self._spans[k - self._base]

    def __len__(self) -> int:
        return self._base + len(self._spans)


def _mark_cut(text: str, spans: _Spans, i: int, j: int) -> int:
    """``j``, moved back while token ``j`` is a mark (a vowel sign, say) of the character before it."""
    while j > i + 1 and _attached(text[spans[j][0]]):
        j -= 1
    return j


def _end(text: str, spans: _Spans, j: int) -> int:
    """Where the text of tokens ``[.., j)`` ends: after the marks the tokenizer dropped (accents, harakat)."""
    return _extend(text, spans[j - 1][1], spans[j][0] if j < len(spans) else len(text))


def _sentence_cut(text: str, spans: _Spans, i: int, j: int) -> int:
    """The token index to end the window [i, j) at: after the last sentence end in its second half."""
    half = i + (j - i) // 2
    for k in range(j - 1, half, -1):
        # Token k and the gap after it, up to the next token's first character (which a lookahead may read); a
        # lookbehind reads the text before it (a CJK full stop before the quote that closes its sentence).
        end = spans[k + 1][0] + 1 if k + 1 < len(spans) else spans[k][1]
        if _SENTENCE_END.search(text, spans[k][0], end):
            return k + 1
    return j


def truncate_to_tokens(text: str, max_tokens: int, *, counter: TokenCounter | None = None) -> str:
    """The longest prefix of ``text`` with at most ``max_tokens`` tokens."""
    counter = counter or token_counter()
    spans = counter.offsets(text)
    if len(spans) <= max_tokens:
        return text
    if max_tokens <= 0:
        return ""
    n = _fit(text, spans, -1, _mark_cut(text, spans, -1, max_tokens), max_tokens, counter)
    return text[:_end(text, spans, n)] if n else ""


def _fit(text: str, spans: _Spans, i: int, j: int, budget: int, counter: TokenCounter) -> int:
    """``j``, moved back until tokens ``(i, j)`` recount within ``budget`` on their own: a piece cut out of a word
    WordPiece could not split whole (a Thai run, say) may split, into more tokens than its few-character pieces."""
    start = spans[i][0] if i >= 0 else 0
    while j > i + 1 and (excess := counter.count(text[start:_end(text, spans, j)]) - budget) > 0:
        j = _mark_cut(text, spans, i, max(i + 1, j - excess))
    return j
