"""Confusable words at enrolment: phonetic neighbours, spoken by espeak-ng, kept as negatives."""

from __future__ import annotations

import numpy as np
import pytest

from kws.bank import KeywordBank
from kws.confusables import (
    ConfusableConfig,
    find_neighbours,
    keyword_phonemes,
    load_lexicon,
)
from kws.enroll import enroll
from kws.feedback import undo
from tests.test_enroll import BandEmbedder, gaussian_impostors, tone

LEXICON = {
    "tree": ("t", "ɹ", "iː"), "free": ("f", "ɹ", "iː"), "through": ("θ", "ɹ", "uː"), "agree": ("ə", "ɡ", "ɹ", "iː"),
    "thee": ("ð", "iː"), "cat": ("k", "æ", "t"), "three": ("θ", "ɹ", "iː"), "threat": ("θ", "ɹ", "ɛ", "t"),
}  # fmt: skip


def test_neighbours_are_one_sound_apart_first_and_never_the_keyword_or_unrelated_words() -> None:
    found = find_neighbours("three", ("θ", "ɹ", "iː"), LEXICON, max_words=10)
    words = [n.word for n in found]
    assert words[:3] == ["tree", "free", "through"]  # one sound apart, in lexicon (frequency) order
    assert all(n.distance == 1 for n in found[:3]) and found[0].kind == "one sound apart"
    assert "three" not in words and "cat" not in words
    assert {"agree", "threat"} <= set(words)  # rhymes / starts alike
    assert [n.word for n in find_neighbours("three", ("θ", "ɹ", "iː"), LEXICON, max_words=2)] == ["tree", "free"]


def test_bundled_lexicon_finds_minimal_pairs_of_a_real_word() -> None:
    words = [n.word for n in find_neighbours("three", keyword_phonemes("three"), load_lexicon(), 10)]
    assert {"tree", "free"} <= set(words)


@pytest.mark.parametrize("text", ["123", "日本語", "#1", ""])
def test_text_espeak_cannot_say_has_no_phonemes(text: str) -> None:
    assert keyword_phonemes(text) is None


def test_enroll_keeps_confusables_as_undoable_negatives_and_says_when_it_cannot() -> None:
    emb = BandEmbedder()
    clips = [tone(440 + 5 * i, seed=i) for i in range(3)]
    impostors = gaussian_impostors(300)
    res = enroll(emb, "three", clips, impostors=impostors, confusables=ConfusableConfig(max_words=2, voices=2))
    kw = res.keyword
    assert [e.source.split(" ")[1] for e in kw.history] == [n.word for n, _ in res.confusables]
    assert res.confusables and all(e.kind == "negative" and e.embeddings.shape == (2, 32) for e in kw.history)
    for (_, sim), e in zip(res.confusables, kw.history):
        assert sim == pytest.approx(float((e.embeddings @ kw.centers.T).max()), abs=1e-5)
    # A negative never silences the keyword's own clips.
    assert np.all(kw.score(kw.positives) > -1)
    bank = KeywordBank(emb.model_id, emb.dim)
    bank.add(kw)
    while kw.history:
        undo(bank, "three")
    plain = enroll(emb, "three", clips, impostors=impostors)
    assert kw.negatives is None
    assert res.threshold == kw.threshold == pytest.approx(plain.threshold)  # negatives leave the threshold as it was

    digits = enroll(emb, "42", clips, impostors=impostors, confusables=ConfusableConfig(max_words=2, voices=1))
    assert not digits.keyword.history and not digits.confusables
    assert any("cannot say '42'" in w for w in digits.warnings)


def test_undoing_a_confusable_keeps_a_budget_threshold() -> None:
    from kws.background import Background

    emb = BandEmbedder()
    clips = [tone(440 + 5 * i, seed=i) for i in range(3)]
    background = Background(gaussian_impostors(3000, seed=2) / 6 + emb(clips[:1]), np.array([""] * 3000), 0.1, emb.model_id)
    background.embeddings /= np.linalg.norm(background.embeddings, axis=1, keepdims=True)
    res = enroll(emb, "three", clips, impostors=gaussian_impostors(300), confusables=ConfusableConfig(2, 1),
                 fa_per_hour=6.0, background=background)  # fmt: skip
    assert res.budget is not None and res.keyword.history
    assert res.threshold != pytest.approx(res.calibration.threshold)  # the budget moved it
    budgeted = res.threshold
    bank = KeywordBank(emb.model_id, emb.dim)
    bank.add(res.keyword)
    undo(bank, "three")
    assert bank["three"].threshold == pytest.approx(budgeted) and "budget" in bank["three"].info


def test_feedback_recalibration_leaves_confusable_words_out() -> None:
    from kws.scoring import recalibrate

    emb = BandEmbedder()
    clips = [tone(440 + 5 * i, seed=i) for i in range(3)]
    # Impostors near the keyword, some of them near its confusable words too.
    impostors = gaussian_impostors(500) * 0.3 + emb(clips[:1])
    impostors /= np.linalg.norm(impostors, axis=1, keepdims=True)
    with_conf = enroll(emb, "three", clips, impostors=impostors, confusables=ConfusableConfig(3, 2)).keyword
    plain = enroll(emb, "three", clips, impostors=impostors).keyword
    assert with_conf.negatives is not None and with_conf.feedback_negatives is None
    # The confusable words do suppress some impostors at detection ...
    assert (with_conf.score(impostors) < with_conf.score(impostors, feedback_only=True)).any()
    # ... but calibration does not count on that.
    assert recalibrate(with_conf, impostors).threshold == pytest.approx(recalibrate(plain, impostors).threshold)


def test_feedback_keeps_a_keyword_to_its_budget(monkeypatch) -> None:
    import kws.feedback
    from kws.background import Background
    from kws.feedback import add_negative

    emb = BandEmbedder()
    clips = [tone(440 + 5 * i, seed=i) for i in range(3)]
    background = Background(gaussian_impostors(3000, seed=2) / 6 + emb(clips[:1]), np.array([""] * 3000), 0.1, emb.model_id)
    background.embeddings /= np.linalg.norm(background.embeddings, axis=1, keepdims=True)
    impostors = gaussian_impostors(300)
    res = enroll(emb, "beep", clips, impostors=impostors, fa_per_hour=6.0, background=background)
    budgeted = res.threshold
    assert budgeted > res.calibration.threshold + 0.1  # random impostors alone would set it far lower
    bank = KeywordBank(emb.model_id, emb.dim)
    bank.add(res.keyword)
    monkeypatch.setattr(kws.feedback, "load_background", lambda e: background)
    add_negative(emb, bank, "beep", tone(2000, seed=9), impostors=impostors)
    kw = bank["beep"]
    assert kw.info["budget"]["fa_per_hour"] == 6.0
    assert kw.threshold == pytest.approx(budgeted, abs=0.02)
