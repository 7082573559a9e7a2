"""KeywordBank files: round trips, damaged or foreign files, crash-safe writes, and `kws bank`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from kws.bank import BANK_VERSION, Keyword, KeywordBank
from kws.cli import main
from kws.errors import BankError


def make_bank(model_id: str = "kws-model-a", dim: int = 8) -> KeywordBank:
    rng = np.random.default_rng(0)
    bank = KeywordBank(model_id, dim)
    for i, name in enumerate(["marvin", "sheila", "zebra"]):
        c = rng.standard_normal((1 + i % 2, dim)).astype(np.float32)
        c /= np.linalg.norm(c, axis=1, keepdims=True)
        bank.add(Keyword(name, c, threshold=0.5 + 0.1 * i, samples=3 + i, info={"calibration": {"target_far": 0.01}}))
    return bank


@pytest.fixture
def bank_file(tmp_path: Path) -> Path:
    path = tmp_path / "bank.json"
    make_bank().save(path)
    return path


def test_round_trip_keeps_centers_thresholds_and_scores(bank_file: Path) -> None:
    original = make_bank()
    loaded = KeywordBank.load(bank_file, model_id="kws-model-a")
    assert loaded.names == original.names and loaded.dim == 8
    for name in original.names:
        a, b = original[name], loaded[name]
        np.testing.assert_allclose(b.centers, a.centers, atol=1e-6)
        assert (b.threshold, b.samples, b.info) == (a.threshold, a.samples, a.info)
    x = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    np.testing.assert_allclose(loaded.score(x), original.score(x), atol=1e-5)


def test_enrolment_round_trips_through_the_bank_file(random_checkpoint: Path, tmp_path: Path) -> None:
    from kws.embedder import load_embedder
    from kws.enroll import enroll

    emb = load_embedder(random_checkpoint)
    rng = np.random.default_rng(2)
    t = np.arange(8000) / 16000
    clips = [(0.3 * np.sin(2 * np.pi * 500 * t) + 0.02 * rng.standard_normal(8000)).astype(np.float32)] * 3
    impostors = emb([(0.2 * rng.standard_normal(12000)).astype(np.float32) for _ in range(20)])
    res = enroll(emb, "tone", clips, impostors=impostors)
    bank = KeywordBank(emb.model_id, emb.dim)
    bank.add(res.keyword)
    bank.save(tmp_path / "b.json")
    loaded = KeywordBank.load(tmp_path / "b.json", model_id=emb.model_id)
    np.testing.assert_allclose(loaded["tone"].centers, res.keyword.centers, atol=1e-6)
    assert loaded["tone"].threshold == pytest.approx(res.threshold)
    assert loaded["tone"].info["calibration"]["impostors"] == 20


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda s: s[: len(s) // 2], "corrupt or truncated"),
        (lambda s: "\x00\x01garbage", "corrupt or truncated"),
        (lambda s: json.dumps({"hello": 1}), "not a kws keyword bank"),
        (lambda s: s.replace(f'"version": {BANK_VERSION}', '"version": 99'), "version 99 is not supported"),
        (lambda s: s.replace('"threshold": 0.5', '"threshold": "high"'), "'marvin' is malformed"),
        (lambda s: s.replace('"dim": 8', '"dim": 9'), "expected \\(n, 9\\)"),
    ],
)
def test_damaged_bank_gives_clear_error(bank_file: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    bank_file.write_text(damage(bank_file.read_text()))
    with pytest.raises(BankError, match=message) as info:
        KeywordBank.load(bank_file)
    assert str(bank_file) in str(info.value)


def test_foreign_model_and_missing_file(bank_file: Path, tmp_path: Path) -> None:
    with pytest.raises(BankError, match="made with model kws-model-a.*re-enrol"):
        KeywordBank.load(bank_file, model_id="kws-model-b")
    with pytest.raises(BankError, match="not found.*kws enroll"):
        KeywordBank.load(tmp_path / "nope.json")


@pytest.mark.parametrize("fail", ["serialise", "rename"])
def test_crash_mid_write_leaves_existing_bank_intact(
    bank_file: Path, monkeypatch: pytest.MonkeyPatch, fail: str
) -> None:
    import kws.fileio

    before = bank_file.read_bytes()
    bank = KeywordBank.load(bank_file)
    bank.remove("marvin")

    def boom(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError("simulated crash")

    if fail == "serialise":
        monkeypatch.setattr(kws.fileio.json, "dumps", boom)
    else:
        monkeypatch.setattr(kws.fileio.os, "replace", boom)
    with pytest.raises(OSError, match="simulated crash"):
        bank.save(bank_file)
    monkeypatch.undo()
    assert bank_file.read_bytes() == before
    assert os.listdir(bank_file.parent) == [bank_file.name]  # no temporary left behind
    assert KeywordBank.load(bank_file).names == ["marvin", "sheila", "zebra"]


def test_python_api_add_remove_rename(bank_file: Path) -> None:
    bank = KeywordBank.load(bank_file)
    with pytest.raises(BankError, match="already enrolled"):
        bank.add(bank["marvin"])
    bank.rename("marvin", "martin")
    with pytest.raises(BankError, match="already exists"):
        bank.rename("martin", "sheila")
    bank.remove("zebra")
    with pytest.raises(BankError, match="no keyword 'zebra'.*martin, sheila"):
        bank.remove("zebra")
    bank.save(bank_file)
    assert KeywordBank.load(bank_file).names == ["martin", "sheila"]


def test_cli_bank_commands(bank_file: Path, capsys: pytest.CaptureFixture) -> None:
    b = ["--bank", str(bank_file)]
    assert main(["bank", "list", *b]) == 0
    out = capsys.readouterr().out
    assert "3 keyword(s)" in out and "kws-model-a" in out
    assert all(name in out for name in ("marvin", "sheila", "zebra"))
    assert main(["bank", "show", "sheila", *b]) == 0
    assert "threshold 0.600" in capsys.readouterr().out
    assert main(["bank", "remove", "zebra", *b]) == 0
    assert main(["bank", "rename", "sheila", "shelly", *b]) == 0
    assert KeywordBank.load(bank_file).names == ["marvin", "shelly"]  # renaming keeps the order
    assert main(["bank", "remove", "zebra", *b]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no keyword 'zebra'" in err
    bank_file.write_text("{")
    assert main(["bank", "list", *b]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err


def test_every_change_of_a_bank_holds_its_lock(bank_file: Path) -> None:
    import threading

    from kws.bank import locked_bank
    from kws.errors import KwsError
    from kws.fileio import file_lock

    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with locked_bank(bank_file) as bank:
            bank.remove("zebra")
            inside.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(10)
    with pytest.raises(KwsError, match="another kws process"):
        with file_lock(bank_file, timeout_s=0.2):
            pass
    codes: list[int] = []
    renamer = threading.Thread(target=lambda: codes.append(main(["bank", "rename", "marvin", "m", "--bank", str(bank_file)])))
    renamer.start()
    renamer.join(0.5)
    assert renamer.is_alive()  # waiting for the lock
    release.set()
    holder.join()
    renamer.join(10)
    # The rename waited for the holder's change, then read the bank again: both changes are kept.
    assert codes == [0] and KeywordBank.load(bank_file).names == ["m", "sheila"]


def test_saving_through_a_symlink_keeps_the_link_and_the_mode(tmp_path: Path) -> None:
    import stat

    real = tmp_path / "store" / "bank.json"
    make_bank().save(real)
    os.chmod(real, 0o600)
    link = tmp_path / "bank.json"
    link.symlink_to(real)
    bank = KeywordBank.load(link)
    bank.remove("zebra")
    bank.save(link)
    assert main(["bank", "rename", "sheila", "s", "--bank", str(link)]) == 0
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert KeywordBank.load(real).names == ["marvin", "s"]
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    assert sorted(p.name for p in real.parent.iterdir()) == [".bank.json.lock", "bank.json"]  # no temporary left


def test_keyword_names_are_normalised_and_validated(bank_file: Path) -> None:
    bank = KeywordBank.load(bank_file)
    c = bank["marvin"].centers
    with pytest.raises(BankError, match="already enrolled"):
        bank.add(Keyword("marvin ", c, 0.5, 1))  # not a second keyword that looks the same
    bank.add(Keyword("  lights\u00a0 on ", c, 0.5, 1))
    assert bank.names[-1] == "lights on" and "lights on " in bank and bank["lights  on"].name == "lights on"
    for bad in ("lights\non", "tab\there", "zero\u200bwidth", "   "):
        with pytest.raises(BankError, match="control or invisible|cannot be empty"):
            bank.add(Keyword(bad, c, 0.5, 1))
        with pytest.raises(BankError):
            bank.rename("sheila", bad)
    # A file whose names tidy to the same name is refused, not silently merged.
    d = json.loads(bank_file.read_text())
    d["keywords"]["marvin "] = d["keywords"]["marvin"]
    bank_file.write_text(json.dumps(d))
    with pytest.raises(BankError, match="one name"):
        KeywordBank.load(bank_file)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: d["keywords"]["marvin"].update(threshold=7.0), "outside \\[-1, 1\\].*never fire"),
        (lambda d: d["keywords"]["marvin"].update(threshold=-3.0), "outside \\[-1, 1\\].*any sound"),
        (lambda d: d["keywords"]["marvin"]["centers"][0].__setitem__(0, 5.0), "unit-length"),
        (lambda d: d["keywords"]["marvin"].update(samples=0), "samples is 0"),
    ],
)
def test_hand_edited_absurd_values_are_refused_on_load(bank_file: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    d = json.loads(bank_file.read_text())
    damage(d)
    bank_file.write_text(json.dumps(d))
    with pytest.raises(BankError, match=message):
        KeywordBank.load(bank_file)


def test_infinity_and_deep_nesting_give_bank_errors(bank_file: Path) -> None:
    d = json.loads(bank_file.read_text())
    d["keywords"]["marvin"]["positives"] = [[float("inf")] * 8]
    bank_file.write_text(json.dumps(d))
    with pytest.raises(BankError, match="positives are not finite"):
        KeywordBank.load(bank_file)
    bank_file.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(BankError, match="nested too deeply"):
        KeywordBank.load(bank_file)
