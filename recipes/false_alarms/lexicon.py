"""Write the bundled phoneme lexicon that enrolment searches for a keyword's confusable words.

    python recipes/false_alarms/lexicon.py   # -> kws/assets/lexicon_en-us.tsv

One line per word of the two bundled vocabularies (the 3,000 frequent English words and
the 35 Speech Commands words), most frequent first: ``word<TAB>phonemes separated by spaces``,
as espeak-ng's en-us voice says them (:func:`kws.phonemes.phonemes_of`).
"""

from __future__ import annotations

from kws.confusables import LEXICON_PATH, write_lexicon
from kws.data.synth import load_vocab


def main() -> None:
    words = list(dict.fromkeys(load_vocab("train") + load_vocab("speech_commands")))
    write_lexicon(words, LEXICON_PATH)
    print(f"{LEXICON_PATH}: {len(words)} words")


if __name__ == "__main__":
    main()
