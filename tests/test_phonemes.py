"""Phonemes from espeak-ng, phoneme edit distance, minimal pairs."""

from __future__ import annotations

import pytest

from kws.errors import DataError
from kws.phonemes import edit_distance, minimal_pairs, phonemes, phonemes_of, speakable


def test_phonemes_are_split_and_stress_free() -> None:
    cat, bat = phonemes("cat"), phonemes("bat")
    assert len(cat) == len(bat) == 3
    assert cat[1:] == bat[1:] and cat[0] != bat[0]  # /k/ vs /b/, same rhyme
    assert all(t and not set(t) & set("ˈˌ_") for t in phonemes("seven") + cat)
    with pytest.raises(DataError, match="empty"):
        phonemes("  ")


@pytest.mark.parametrize(
    ("a", "b", "d"),
    [("kat", "bat", 1), ("kat", "kat", 0), ("kat", "at", 1), ("kat", "kats", 1), ("kat", "tak", 2), ("", "abc", 3),
     ("sɪtɪŋ", "kɪtən", 3)],
)  # fmt: skip
def test_edit_distance_on_hand_made_sequences(a: str, b: str, d: int) -> None:
    assert edit_distance(tuple(a), tuple(b)) == d == edit_distance(tuple(b), tuple(a))


def test_edit_distance_counts_phonemes_not_characters() -> None:
    # A diphthong is one phoneme: swapping it for a monophthong is one edit.
    assert edit_distance(("l", "aɪ", "t"), ("l", "a", "t")) == 1


def test_minimal_pairs_among_words() -> None:
    pairs = minimal_pairs(["cat", "bat", "seven", "cab", "cat"])
    found = {(a, b) for a, b, _ in pairs}
    assert ("cat", "bat") in found and ("cat", "cab") in found
    assert not any("seven" in p for p in found)
    assert all(d == 1 for _, _, d in pairs)
    assert any(d == 2 for _, _, d in minimal_pairs(["bat", "cab"], max_distance=2))


def test_phonemes_of_many_words_in_one_call_match_one_call_each() -> None:
    words = ["three", "tree", "free", "seven", "thinkengine"]
    assert phonemes_of(words) == [phonemes(w) for w in words]
    with pytest.raises(DataError, match="empty"):
        phonemes_of(["cat", " "])


@pytest.mark.parametrize("text", ["yes", "hey computer", "o'clock", "walkie-talkie"])
def test_words_in_plain_letters_are_speakable(text: str) -> None:
    assert speakable(text)


@pytest.mark.parametrize("text", ["", "123", "R2-D2", "hey!", "é", "two  spaces", " yes", "yes-", "日本語"])
def test_digits_symbols_other_scripts_and_loose_separators_are_not_speakable(text: str) -> None:
    assert not speakable(text)
