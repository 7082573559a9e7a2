"""Corpora for training and evaluation: the Speech Commands reader and downloader
(:mod:`~kws.data.speech_commands`), the synthetic corpus (:mod:`~kws.data.synth`),
augmentation (:mod:`~kws.data.augment`), batch samplers (:mod:`~kws.data.sampler`)
and the real-speech pack (:mod:`~kws.data.real_pack`).

Import the module you need: importing this package imports none of them, so
``kws synth`` runs without torch.
"""
