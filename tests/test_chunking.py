"""Token counting, chunking and truncation of text the MiniLM tokenizer cannot split, and of combining marks."""

from __future__ import annotations

import base64
import hashlib
import math
import unicodedata

import pytest

from genroute.backends.rag import WRAPPER_TOKENS, pack
from genroute.knowledge.chunking import chunk_text, token_counter, truncate_to_tokens
from genroute.knowledge.store import Hit
from genroute.runtime.billing import CHARS_PER_TOKEN

THAI = "ภาษาไทยเป็นภาษาที่ไม่มีการเว้นวรรคระหว่างคำซึ่งทำให้การตัดคำเป็นเรื่องยาก" * 40
EMOJI = "🎉🙂🔥" * 300
LONG_RUN = "QUJD" * 250  # a base64-like run: one 1000-character "word"
FAMILY = "👨\u200d👩\u200d👧\u200d👦" * 200  # emoji joined by ZWJ: no piece may end on a joiner


@pytest.mark.parametrize("text", [EMOJI, "🎉🙂🔥" * 20])
def test_a_word_the_tokenizer_cannot_split_counts_a_token_per_few_characters(text: str) -> None:
    assert token_counter().count(text) == math.ceil(len(text) / CHARS_PER_TOKEN)


HEX = hashlib.sha512(b"genroute").hexdigest() * 2  # one 256-character word
BASE64 = base64.b64encode(hashlib.sha512(b"a").digest() * 12).decode()  # words of all lengths between + and /
URL = "https://example.com/assets/" + hashlib.sha256(b"u").hexdigest() * 5 + "/app.min.js?v=" + "9f3a" * 40
LONG_WORDS = [HEX, BASE64, URL, LONG_RUN]


@pytest.mark.parametrize("text", LONG_WORDS, ids=["hex", "base64", "url", "run"])
def test_a_word_over_100_characters_counts_the_wordpieces_of_its_slices(text: str) -> None:
    counter = token_counter()
    whole = counter.count(text)
    assert max(counter.count(text[:n]) for n in range(len(text) + 1)) == whole  # h[:100] counted 66, h 64
    # The text up to the end of its k-th token is k tokens: counts grow with the prefix, token by token.
    assert [counter.count(text[:end]) for _, end in counter.offsets(text)] == list(range(1, whole + 1))
    assert counter.count(HEX) == sum(counter.count(HEX[n:n + 100]) for n in (0, 100, 200))


@pytest.mark.parametrize("text", [*LONG_WORDS, THAI, EMOJI, FAMILY, THAI[:150] + HEX + " ok " + EMOJI[:120],
                                  "This is an English sentence used for counting tokens. " * 20],
                         ids=["hex", "base64", "url", "run", "thai", "emoji", "family", "mixed", "english"])
def test_truncation_and_chunks_recount_within_their_budget(text: str) -> None:
    counter = token_counter()
    for n in range(0, counter.count(text) + 2):
        assert counter.count(truncate_to_tokens(text, n)) <= n
    if text is BASE64:  # a chunk that starts inside a short word recounts it from there (WordPiece: +1 at most)
        return
    for n in (8, 16, 50):
        assert all(counter.count(chunk.text) <= n for chunk in chunk_text(text, chunk_tokens=n, overlap=n // 4))


@pytest.mark.parametrize("text", [THAI, EMOJI, LONG_RUN, FAMILY])
def test_unsplittable_text_is_chunked_and_truncated_within_the_budget(text: str) -> None:
    counter = token_counter()
    assert counter.count(text) >= len(text) / (2 * CHARS_PER_TOKEN)
    chunks = chunk_text(text, chunk_tokens=50, overlap=0)
    assert len(chunks) > 1
    assert "".join(c.text for c in chunks) == text  # no overlap: the pieces are the text, nothing lost
    for chunk in chunks:
        assert chunk.tokens <= 50 and counter.count(chunk.text) <= 50
        assert text[chunk.start:chunk.end] == chunk.text
        assert not chunk.text.endswith("\u200d") and not chunk.text[-1:].isspace()
    short = truncate_to_tokens(text, 10)
    assert text.startswith(short) and 0 < len(short) <= 10 * 7  # 10 pieces (a piece: 4 characters, or one emoji)


def test_ordinary_text_counts_as_wordpiece_does() -> None:
    counter = token_counter()
    # The counts WordPiece gives (and gave before unknown words were charged by length).
    assert counter.count("This is an English sentence used for counting tokens.") == 11
    assert counter.count("这是一个测试句子。") == 9
    assert counter.count("هذه جملة اختبار باللغة العربية لفحص عدد الرموز.") == 40
    assert counter.count("हिन्दी भाषा भारत की राजभाषा है") == 23
    assert counter.count("Donaudampfschifffahrtsgesellschaftskapitänsmützenabzeichenherstellungsbetrieb") == 28
    assert counter.count("ab🎉 x") == 2  # a short unknown word is still one token


def test_rag_context_budget_holds_for_unsplittable_text() -> None:
    docs, _ = pack([Hit(id="c1", text=THAI, metadata={"source": "s"}, distance=0.1)], budget=100)
    (doc,) = docs
    assert THAI.startswith(doc["text"]) and 0 < token_counter().count(doc["text"]) <= 100 - WRAPPER_TOKENS
    assert len(doc["text"]) < 2 * (100 - WRAPPER_TOKENS) * CHARS_PER_TOKEN  # pieces of 4 letters and their marks


@pytest.mark.parametrize("text", ["re\u0301sume\u0301", "यह है", "كَتَبَ", "ok \u263a\ufe0f", "नमस्ते"])
def test_a_chunk_keeps_the_marks_at_its_end(text: str) -> None:
    (chunk,) = chunk_text(text)
    assert (chunk.text, chunk.start, chunk.end) == (text, 0, len(text))
    assert truncate_to_tokens(text, token_counter().count(text)) == text


def test_chunks_neither_end_before_nor_start_with_a_mark() -> None:
    text = " ".join(f"वाक्य {i} यहाँ है और यह हिन्दी में लिखा गया है।" for i in range(60))
    chunks = chunk_text(text, chunk_tokens=30, overlap=0)
    assert len(chunks) > 2
    assert "".join(c.text for c in chunks).replace(" ", "") == text.replace(" ", "")  # each character once
    for chunk in chunks:
        assert text[chunk.start:chunk.end] == chunk.text
        assert not unicodedata.category(chunk.text[0]).startswith("M")
        assert chunk.end == len(text) or not unicodedata.category(text[chunk.end]).startswith("M")
    assert truncate_to_tokens("यह है और", 3) == "यह है"  # "है": one token and the vowel sign it drops
    assert truncate_to_tokens("लिखा", 1) == ""  # "ल" alone would drop its vowel sign


@pytest.mark.parametrize("text", [
    "今天天气很好，我们去公园散步。公园里有很多人在跳舞！你想一起去吗？明天可能会下雨，所以今天是最好的机会。" * 6,
    "東京は日本の首都です。人口はとても多いです！観光客も毎年たくさん来ますか？春には桜が美しく咲きます。" * 6,
], ids=["chinese", "japanese"])
def test_cjk_sentence_ends_are_cut_points(text: str) -> None:
    # 。！？ end a sentence with no space after them: a chunk used to end mid-sentence.
    chunks = chunk_text(text, chunk_tokens=40, overlap=0)
    assert len(chunks) > 2
    assert all(chunk.text[-1] in "。！？" for chunk in chunks)
    assert "".join(c.text for c in chunks) == text


def test_a_quoted_cjk_sentence_is_cut_after_its_closing_quote() -> None:
    text = "他说：「我们明天去北京。」" * 20
    chunks = chunk_text(text, chunk_tokens=20, overlap=0)
    assert len(chunks) > 2 and all(chunk.text.endswith("。」") for chunk in chunks)  # never between the two



def test_a_text_is_chunked_a_segment_at_a_time_as_it_was_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    from genroute.knowledge import chunking

    words = ["the", "of", "catalogue", "kettle.", "e\u0301", THAI[:60], "QUJD" * 40, FAMILY[:20], "日本語。", "\n"]
    text = " ".join(words[(i * 7) % 11 % len(words)] for i in range(3000))
    whole = chunk_text(text, chunk_tokens=64, overlap=16)
    monkeypatch.setattr(chunking, "SEGMENT_CHARS", 100)  # many segments, some inside a word longer than one
    assert [(c.text, c.start, c.end, c.tokens) for c in chunk_text(text, chunk_tokens=64, overlap=16)] == [
        (c.text, c.start, c.end, c.tokens) for c in whole]


def test_chunking_a_long_text_holds_its_tokens_a_segment_at_a_time() -> None:
    """A 6 MB file peaked at ~1.1 GB: the offsets of every token of the text were held at once (~87 bytes a character
    here); now a segment's, next to the chunks themselves."""
    import tracemalloc

    words = "the of and to in is was for on that with as by at from his her an which were are".split()
    text = "\n\n".join(" ".join(words[(i + k * k) % len(words)] for k in range(100)) + "." for i in range(2500))
    token_counter().count("load the tokenizer first")
    tracemalloc.start()
    try:
        chunks = chunk_text(text, chunk_tokens=200, overlap=40)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(chunks) > 500 and peak < 10 * len(text)
