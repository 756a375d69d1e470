"""How the scorers compare answer text: SQuAD v1.1's normalisation and token F1 (with MLQA's Unicode punctuation
and a Unicode fold beyond ASCII), and whether an answer names a label (``genroute.bench.scorers.label_accuracy``)."""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)
#: Unicode categories of punctuation (MLQA's evaluation deletes every such character, as SQuAD's deletes ASCII's).
_UNICODE_PUNCTUATION = frozenset({"Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po"})
#: Format characters (Cf): zero-width space and (non-)joiners U+200B..U+200D, word joiner U+2060, byte order mark
#: U+FEFF, soft hyphen, direction marks. None is ASCII.
_INVISIBLE = frozenset({"Cf"})


def fold(text: str) -> str:
    """``text`` in one Unicode form and case, as the scorers compare it: ASCII lower-cased (SQuAD's, exactly),
    anything else without its format characters (``_INVISIBLE``), in NFKC and case-folded."""
    if text.isascii():
        return text.lower()
    # A zero-width space or joiner, a word joiner or a byte order mark pasted into an answer is not seen by a reader.
    text = "".join(ch for ch in text if unicodedata.category(ch) not in _INVISIBLE)
    # NFKC: an answer in NFD ("o" + combining acute) or in full-width forms ("２０１２") is the reference's text;
    # casefold, not lower: "STRASSE" is "Straße", "ΟΔΟΣ" is "οδοσ". NFKC again, as casefold can undo it.
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def normalize(text: str) -> str:
    """SQuAD v1.1's official normalisation: lower case, punctuation deleted (``_`` too), then articles, then
    runs of whitespace; beyond ASCII, lower case is ``fold``'s and punctuation is any Unicode punctuation
    (categories P*: "،", "«»", "।", "。", "–"), as MLQA's evaluation deletes it."""
    text = "".join(ch for ch in fold(text) if ch not in _PUNCTUATION
                   and (ch.isascii() or unicodedata.category(ch) not in _UNICODE_PUNCTUATION))
    return " ".join(_ARTICLES.sub(" ", text).split())


def f1(prediction: str, gold: str) -> float:
    """SQuAD v1.1 token F1 after normalisation (0 when nothing is shared, both sides empty included)."""
    pred, ref = normalize(prediction).split(), normalize(gold).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


#: Sentence punctuation around a label ("Positive.", "(A)", "**B**"): read as spaces. Signs and symbols are kept,
#: since they tell labels apart ("+1" / "-1", "C++" / "C#", "4.5" / "45" once "." is a space, emoji).
_LABEL_PUNCTUATION = str.maketrans({**{c: " " for c in ".,;:!?()[]{}<>*`\"“”«»"}, "'": None, "’": None})
ARTICLE_WORDS = frozenset({"a", "an", "the"})


def label_key(text: str) -> str:
    """How a mention of a label is compared: in one Unicode form and case (``fold``: a label file written with "e"
    and a combining accent, the model answering "é"), sentence punctuation as spaces, runs of whitespace."""
    return " ".join(fold(text).translate(_LABEL_PUNCTUATION).split())


def same_label(answer: str, label: str) -> bool:
    """Whether the answer is the label: ``label_key``s equal, "_" counting as a space ("card arrival" names
    card_arrival), or equal once articles are dropped ("Beatles" names "The Beatles"). A label that is only an
    article ("A", an answer letter) is compared as it is, never dropped to nothing."""
    got, gold = (label_key(t.replace("_", " ")).split() for t in (answer, label))
    if not gold:  # a label of punctuation only ("?"): nothing is left to compare but the label as written
        return answer.strip().casefold() == label.strip().casefold()
    if got == gold:
        return True
    gold_words = [w for w in gold if w not in ARTICLE_WORDS]
    return bool(gold_words) and [w for w in got if w not in ARTICLE_WORDS] == gold_words


#: A number as an answer writes it: a sign, digits, and decimal or thousands separators between digits.
_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)*")


def names_label(text: str, answer: str, label: str) -> bool:
    """Whether the answer ``text`` (``answer``: its ``label_key``) names ``label``. A number label is named by a
    number of the answer that equals it ("4", "4.0"), not by a part of another one: "4.5", "-4" and "1,000" do not
    name the star ratings 4, 4 and 1, though "." and "," read as spaces in a mention."""
    gold = unicodedata.normalize("NFKC", label).strip()
    if _NUMBER.fullmatch(gold) is None:
        return mentions(answer, label_key(label))
    return any(_same_number(found, gold) for found in _NUMBER.findall(unicodedata.normalize("NFKC", text)))


def _same_number(found: str, gold: str) -> bool:
    """Whether the number ``found`` in an answer is ``gold``: written alike, or of equal value ("4.0" is 4)."""
    if found.lstrip("+") == gold.lstrip("+"):
        return True
    try:
        return float(found.replace(",", "")) == float(gold.replace(",", ""))
    except ValueError:  # digits float() does not read (superscripts): only the same writing names the label
        return False


#: Scripts written without spaces between words (Han, also outside the BMP, with 々 〆 〇, kana, halfwidth katakana
#: included, Thai, Lao, Khmer, Myanmar), as a regex character range: a word of them has no word boundary to look for,
#: so a label is named by its letters wherever they stand ("这条评论是正面的" names 正面); and the input token
#: estimate of a matrix's prices counts a token per character of them.
UNSEGMENTED = ("\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3005-\u3007\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf"
               "\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f")
_UNSEGMENTED_CHAR = re.compile(f"[{UNSEGMENTED}]")


def mentions(text: str, phrase: str) -> bool:
    """Whether ``text`` names ``phrase`` as a word: not inside a longer word, unless a side of it is in a script
    without spaces between words (an edge of the phrase, or the text beside it)."""
    joined = rf"[^\W{UNSEGMENTED}]"  # a word character of a script that separates its words
    before = "" if _UNSEGMENTED_CHAR.match(phrase[:1]) else rf"(?<!{joined})"
    after = "" if _UNSEGMENTED_CHAR.match(phrase[-1:]) else rf"(?!{joined})"
    return re.search(before + re.escape(phrase) + after, text) is not None
