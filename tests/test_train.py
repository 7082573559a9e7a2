"""Trainer: a short CPU run learns, resumes exactly, writes loadable checkpoints; DDP; configs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from kws.errors import CheckpointError, ConfigError, KwsError
from kws.train import lr_factor, train
from kws.train_config import load_config, resolve_words

REPO = Path(__file__).resolve().parents[1]
HELDOUT = '["no", "seven"]'  # trained on yes, cat, bat, left


def tiny_overrides(corpus: Path, out: Path, epochs: int = 4) -> list[str]:
    return [
        f'data.root="{corpus}"',
        f"data.heldout_words={HELDOUT}",
        f'train.out_dir="{out}"',
        f"train.epochs={epochs}",
        "train.p=4",
        "train.k=4",
        "train.steps_per_epoch=5",
        "train.device=\"cpu\"",
        "eval.shots=[1]",
        "eval.best_shot=1",
        "eval.episodes=100",
        "eval.eer_episodes=20",
        "eval.ref_per_word=4",
    ]


def read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Output folder of an uninterrupted 4-epoch run on the tiny corpus."""
    out = tmp_path_factory.mktemp("run") / "full"
    train(load_config(None, tiny_overrides(tiny_corpus, out)), progress=False)
    return out


@pytest.mark.slow
def test_short_run_learns_and_logs(trained: Path) -> None:
    rows = read_rows(trained)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"]
    for term in ("loss_triplet", "loss_center", "loss_classifier", "train_acc", "seen_acc", "eer", "clips_per_s"):
        assert term in rows[-1], term
    # 2-way 1-shot on words never trained on, queries from speakers not in the support: chance is 0.5.
    assert rows[-1]["fewshot_1"] > 0.6
    csv_lines = (trained / "metrics.csv").read_text().splitlines()
    assert len(csv_lines) == 5 and "fewshot_1" in csv_lines[0].split(",")


@pytest.mark.slow
def test_checkpoints_load_with_weights_only(trained: Path) -> None:
    from kws.model import load_model

    for name in ("last.pt", "best.pt"):
        payload = torch.load(trained / name, map_location="cpu", weights_only=True)
        assert payload["extra"]["classes"] == ["bat", "cat", "left", "yes"]
        model = load_model(trained / name)
        emb = model(torch.zeros(2, 16000))
        assert emb.shape == (2, 128)
    assert torch.load(trained / "last.pt", weights_only=True)["extra"]["epoch"] == 4


@pytest.mark.slow
def test_resume_continues_where_it_stopped(trained: Path, tiny_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    cfg = load_config(None, tiny_overrides(tiny_corpus, out))

    class Stop(Exception):
        pass

    def stop_after_two(row: dict) -> None:
        if row["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        train(cfg, progress=False, on_epoch=stop_after_two)
    assert torch.load(out / "last.pt", weights_only=True)["extra"]["epoch"] == 2
    with pytest.raises(KwsError, match="--resume"):
        train(cfg, progress=False)
    seen = []
    train(cfg, resume=True, progress=False, on_epoch=lambda row: seen.append(row["epoch"]))
    assert seen == [3, 4]
    assert [r["epoch"] for r in read_rows(out)] == [1, 2, 3, 4]
    # Same weights as the uninterrupted run: optimizer, centers, head and RNG all carried over.
    full = torch.load(trained / "last.pt", weights_only=True)
    resumed = torch.load(out / "last.pt", weights_only=True)
    assert resumed["extra"]["step"] == full["extra"]["step"] == 20
    for key, value in full["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, atol=1e-5, rtol=1e-4, msg=key)


def test_resume_without_checkpoint_is_refused(tiny_corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(KwsError, match="nothing to resume"):
        train(load_config(None, tiny_overrides(tiny_corpus, tmp_path / "empty")), resume=True, progress=False)


@pytest.mark.slow
def test_ddp_two_cpu_processes(tiny_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    sets = tiny_overrides(tiny_corpus, out, epochs=1) + ["train.p=2", "train.k=2", "train.steps_per_epoch=2"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "kws", "train", *[a for s in sets for a in ("--set", s)]]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank}/2: epoch 1 done, 2 batches" in proc.stderr
    rows = read_rows(out)
    assert len(rows) == 1 and rows[0]["world_size"] == 2
    assert torch.load(out / "last.pt", weights_only=True)["extra"]["step"] == 2
    assert proc.stdout.count("epoch   1 |") == 1  # only rank 0 reports


def test_config_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepochz = 3\n")
    with pytest.raises(ConfigError, match=r"bad\.toml.*train\.epochz"):
        load_config(bad)
    bad.write_text("[trian]\nepochs = 3\n")
    with pytest.raises(ConfigError, match=r"unknown section \[trian\]"):
        load_config(bad)
    bad.write_text("[train]\nepochs = 'three'\n")
    with pytest.raises(ConfigError, match="train.epochs: expected int"):
        load_config(bad)
    bad.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="optim.schedule"):
        load_config(None, ["optim.schedule=linear"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["epochs=3"])
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=r"augment.snr_db: expected 2 values"):
        load_config(None, ["augment.snr_db=[1.0]"])
    with pytest.raises(ConfigError, match="model.head_whiten_fit must be 'clean' or 'all'"):
        load_config(None, ['model.head_whiten_fit="augmented"'])


def test_cli_reports_config_error_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from kws.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text("[loss]\ntriplet_margn = 0.3\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "loss.triplet_margn" in err[0] and err[0].startswith("kws: error:")


def test_overrides_are_typed() -> None:
    cfg = load_config(None, ["train.epochs=7", "optim.lr=1e-3", "loss.triplet_soft=true", 'data.words=["a", "b"]',
                             "data.root=some/where", "augment.snr_db=[5, 10]"])  # fmt: skip
    assert cfg.train.epochs == 7 and cfg.optim.lr == 1e-3 and cfg.loss.triplet_soft is True
    assert cfg.data.words == ["a", "b"] and cfg.data.root == "some/where"
    assert cfg.augment.snr_db == (5.0, 10.0)


def test_recipe_config_holds_out_speech_commands_words() -> None:
    from kws.data.synth import load_vocab

    cfg = load_config(REPO / "recipes" / "speech_commands" / "config.toml")
    words, heldout = resolve_words(cfg.data)
    sc = load_vocab("speech_commands")
    assert heldout == sc and len(sc) == 35
    assert words is not None and not set(words) & set(sc)
    assert set(words) == set(load_vocab("train")) - set(sc)
    assert cfg.model.size == "small"


def test_training_speakers_named_or_the_first_n() -> None:
    from kws.errors import ConfigError
    from kws.train_config import DataConfig, kept_speakers

    available = ["d", "b", "a", "c", "b"]
    assert kept_speakers(DataConfig(), available) is None  # all of them
    assert kept_speakers(DataConfig(max_speakers=2), available) == ["a", "b"]
    named = DataConfig(max_speakers=2, speakers=["d", "c"])
    assert kept_speakers(named, available) == ["d", "c"]
    assert kept_speakers(named, available, root=False) == ["a", "b"]  # another corpus: its first 2
    with pytest.raises(ConfigError, match="data.speakers: x not among"):
        kept_speakers(DataConfig(speakers=["a", "x"]), available)


def test_lr_schedules() -> None:
    total, warmup = 100, 10
    cosine = [lr_factor(s, total, warmup, "cosine", 0.01) for s in range(total)]
    assert cosine[0] == pytest.approx(0.1) and cosine[9] == pytest.approx(1.0)
    assert cosine[-1] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(cosine[9:], cosine[10:]))
    onecycle = [lr_factor(s, total, warmup, "onecycle") for s in range(total)]
    assert onecycle[0] < 0.1 and onecycle[9] == pytest.approx(1.0) and onecycle[-1] < 1e-4
    assert all(a <= b for a, b in zip(onecycle[:9], onecycle[1:10]))


def test_bench_train_measures_throughput(capsys: pytest.CaptureFixture) -> None:
    from kws.cli import main

    assert main(["bench", "train", "--device", "cpu", "--steps", "1", "--warmup", "0", "--p", "2", "--k", "2",
                 "--classes", "4"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "clips_per_s" in out and "ms_per_step" in out
    assert "vs default" not in out


def test_bench_train_compares_losses(capsys: pytest.CaptureFixture) -> None:
    from kws.cli import main

    args = ["bench", "train", "--device", "cpu", "--steps", "1", "--warmup", "0", "--p", "2", "--k", "2",
            "--classes", "4"]  # fmt: skip
    assert main([*args, "--loss", "oim"]) == 0
    table = capsys.readouterr().out.split("vs default")[1].splitlines()[1:]
    assert [line.split()[0] for line in table] == ["default", "oim"]
    assert all(float(line.split()[-1]) > 0 for line in table)  # loss ms
    assert main([*args, "--loss", "arcface"]) == 2
    assert "arcface" in capsys.readouterr().err


@pytest.mark.slow
def test_copy_of_run_is_not_clobbered(trained: Path, tiny_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(trained, out)
    before = (out / "last.pt").read_bytes()
    with pytest.raises(KwsError, match="already holds a training run"):
        train(load_config(None, tiny_overrides(tiny_corpus, out)), progress=False)
    assert (out / "last.pt").read_bytes() == before


def test_metric_loss_and_sampler_are_chosen_by_name(tmp_path: Path) -> None:
    from kws.losses import CircleLoss, OIMLoss
    from kws.train import build_loss

    cfg = load_config(None, ['loss.metric="circle"', "loss.circle_m=0.3", "loss.metric_weight=0.1",
                             'train.sampler="hard_class"'])  # fmt: skip
    loss = build_loss(cfg.loss, 8, 5)
    assert isinstance(loss.terms["circle"], CircleLoss) and loss.terms["circle"].m == 0.3
    assert loss.weights == {"circle": 0.1, "center": 0.1, "classifier": 1.0}
    assert cfg.train.sampler == "hard_class"
    oim = build_loss(load_config(None, ['loss.metric="oim"', "loss.oim_queue_size=16"]).loss, 8, 5).terms["oim"]
    assert isinstance(oim, OIMLoss) and oim.queue.shape == (16, 8)
    # The old weight key still works for the triplet loss, and only there.
    old = load_config(None, ["loss.triplet=0.5"])
    assert build_loss(old.loss, 8, 5).weights["triplet"] == 0.5
    with pytest.raises(ConfigError, match="metric_weight"):
        load_config(None, ['loss.metric="npair"', "loss.triplet=0.5"])
    with pytest.raises(ConfigError, match="loss.metric must be one of"):
        load_config(None, ['loss.metric="arcface"'])
    with pytest.raises(ConfigError, match=r"\[loss\] circle: .*m="):
        load_config(None, ['loss.metric="circle"', "loss.circle_m=1.5"])
    with pytest.raises(ConfigError, match="train.sampler"):
        load_config(None, ['train.sampler="random"'])
    with pytest.raises(ConfigError, match="at least one loss weight"):
        load_config(None, ["loss.metric_weight=0", "loss.center=0", "loss.classifier=0"])


@pytest.mark.slow
def test_ablation_runner_end_to_end(
    tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("ablation", REPO / "recipes" / "speech_commands" / "ablation.py")
    ablation = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "ablation", ablation)  # dataclasses look their module up there
    spec.loader.exec_module(ablation)
    out = tmp_path / "ablation"
    sets = ['data.heldout_vocab=""', 'data.heldout_words=["cat", "bat", "no"]', 'train.device="cpu"', "train.p=3",
            "train.k=2", "train.steps_per_epoch=2", 'train.sampler="hard_class"', "eval.shots=[1, 3]",
            "eval.best_shot=1", "eval.episodes=20", "eval.eer_episodes=10", "eval.ref_per_word=2",
            "eval.queries=2"]  # fmt: skip
    argv = ["--data", str(tiny_corpus), "--epochs", "1", "--out", str(out), "--quiet",
            "--variants", "contrastive", "multi_similarity+ce", *[a for s in sets for a in ("--set", s)]]  # fmt: skip
    ablation.main(argv)
    report = json.loads((out / "ablation.json").read_text())
    rows = report["rows"]
    assert list(rows) == ["contrastive", "multi_similarity+ce"]
    for name, row in rows.items():
        assert (out / name / "best.pt").is_file()
        assert 0.0 <= row["fewshot_1"] <= 1.0 and 0.0 <= row["eer"] <= 1.0 and row["train_time_s"] > 0
        # cat/bat are one phoneme apart; "no" is far from both.
        assert [(p["a"], p["b"]) for p in row["minimal_pairs"]] == [("cat", "bat")]
        assert row["minimal_pair_error"] == pytest.approx(
            (row["minimal_pairs"][0]["a_as_b"] + row["minimal_pairs"][0]["b_as_a"]) / 2
        )
    logged = read_rows(out / "multi_similarity+ce")[0]
    assert "loss_multi_similarity" in logged and "loss_classifier" in logged and "loss_center" not in logged
    # The hard-class sampler got its centers from running means of each word's embeddings (no center loss here):
    # 3 training words, each mean inside the unit ball and not empty; they are kept for resuming.
    centers = torch.load(out / "contrastive" / "last.pt", weights_only=True)["extra"]["sampler_centers"]
    norms = centers.norm(dim=1)
    assert centers.shape == (3, 128) and bool(((norms > 0.05) & (norms <= 1.0 + 1e-5)).all())
    table = (out / "ablation.md").read_text().splitlines()
    assert len(table) == 4 and "minimal-pair error" in table[0] and table[2].startswith("| contrastive only |")
    assert "0.1 multi_similarity + CE" in capsys.readouterr().out
    # A finished variant is not trained again.
    before = (out / "contrastive" / "last.pt").stat().st_mtime_ns
    ablation.main(argv[:-2 * len(sets)] + [a for s in sets for a in ("--set", s)])
    assert (out / "contrastive" / "last.pt").stat().st_mtime_ns == before


@pytest.mark.slow
def test_unlabelled_speech_fills_the_oim_queue_and_only_oim_sees_it(tiny_corpus: Path, tmp_path: Path) -> None:
    from kws.losses import BatchHardTripletLoss, JointLoss, OIMLoss

    # JointLoss: the last rows are unlabelled; the triplet term never sees them, OIM queues them.
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    y = torch.tensor([0, 0, 1, 1, -1, -1])
    triplet, oim = BatchHardTripletLoss(0.2), OIMLoss(2, 8, queue_size=4)
    total, terms = JointLoss({"triplet": triplet, "oim": oim}, {"triplet": 1.0, "oim": 1.0})(emb, y, unlabelled=2)
    assert terms["triplet"] == pytest.approx(float(triplet(emb[:4], y[:4])))
    assert int(oim.queue_filled) == 2 and torch.allclose(oim.queue[:2], emb[4:])
    # The trainer draws train.unlabelled clips of the corpus's other words ("left" here) into each batch.
    out = tmp_path / "oim"
    sets = tiny_overrides(tiny_corpus, out, epochs=1) + [
        'data.words=["yes", "cat", "bat"]', f'data.unlabelled_root="{tiny_corpus}"', "train.unlabelled=3",
        "train.p=3", 'loss.metric="oim"', "loss.oim_queue_size=64",
    ]  # fmt: skip
    train(load_config(None, sets), progress=False)
    state = torch.load(out / "last.pt", weights_only=True)["extra"]["loss"]
    assert int(state["terms.oim.queue_filled"]) == 5 * 3  # 5 steps × 3 unlabelled clips
    with pytest.raises(ConfigError, match="data.unlabelled_root"):
        load_config(None, ["train.unlabelled=3"])
    with pytest.raises(ConfigError, match="every word is a training or held-out word"):
        train(load_config(None, tiny_overrides(tiny_corpus, tmp_path / "x", 1) + [f'data.unlabelled_root="{tiny_corpus}"',
                                                                                  "train.unlabelled=3"]), progress=False)  # fmt: skip


def test_print_config_shows_the_full_resolved_config(tmp_path: Path, capsys) -> None:
    from kws.cli import main

    recipe = REPO / "recipes" / "speech_commands" / "config.toml"
    out = tmp_path / "run"
    assert main(["train", "--config", str(recipe), "--set", "train.epochs=3", "--out", str(out), "--print-config"]) == 0
    printed = tmp_path / "printed.toml"
    printed.write_text(capsys.readouterr().out)
    cfg = load_config(printed)
    assert cfg == load_config(recipe, ["train.epochs=3", f'train.out_dir="{out}"'])
    assert cfg.train.epochs == 3 and cfg.train.p == 64 and cfg.loss.center == 0.1  # override, recipe, default
    assert not out.exists()  # printed, not trained


@pytest.mark.parametrize("recipe", ["speech_commands", "speech_embedding"])
def test_recipe_config_holds_only_what_differs_from_the_defaults(recipe: str) -> None:
    from kws.train_config import TrainConfig

    defaults = TrainConfig().to_dict()
    table = tomllib.loads((REPO / "recipes" / recipe / "config.toml").read_text())
    same = [f"{s}.{k}" for s, keys in table.items() for k, v in keys.items() if v == defaults[s][k]]
    assert not same, f"recipe restates defaults: {same}"


def test_model_config_at_another_sample_rate_is_refused() -> None:
    from kws.model import ModelConfig

    d = ModelConfig().to_dict()
    assert ModelConfig.from_dict(d) == ModelConfig()
    d["frontend"]["sample_rate"] = 8000
    with pytest.raises(CheckpointError, match="8000 Hz; kws works at 16000 Hz"):
        ModelConfig.from_dict(d)


@pytest.mark.slow
def test_real_pack_joins_scratch_training_with_shared_labels(tiny_corpus: Path, tmp_path: Path, fake_pack) -> None:
    # "yes" is a synthetic training word, "no" a held-out one: the first shares a class, the second never trains.
    pack = fake_pack(tmp_path / "pack", words=("yes", "alpha", "bravo", "charlie", "no"))
    out = tmp_path / "run"
    sets = tiny_overrides(tiny_corpus, out, epochs=2) + [f'data.real_pack="{pack}"', "data.real_heldout_fraction=0.4"]
    train(load_config(None, sets), progress=False)
    extra = torch.load(out / "last.pt", weights_only=True)["extra"]
    assert extra["classes"] == ["bat", "cat", "left", "yes", "alpha", "bravo", "charlie"]
    rows = read_rows(out)
    assert all(0 <= r["real_fewshot_1"] <= 1 and "fewshot_1" in r for r in rows)
    csv_header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "real_fewshot_1" in csv_header and "real_eer" in csv_header
    # best.pt follows the real-speech curve.
    best = torch.load(out / "best.pt", weights_only=True)["extra"]["metrics"]
    assert best["real_fewshot_1"] == max(r["real_fewshot_1"] for r in rows)


def test_extra_roots_join_scratch_training_by_word_with_their_weights(tiny_corpus: Path, tmp_path: Path) -> None:
    import shutil

    from kws.data.speech_commands import SpeechCommands
    from kws.train import _setup, build_run

    # Another engine's corpus: the same words, plus one of its own ("rat") and none held out.
    other = Path(shutil.copytree(tiny_corpus, tmp_path / "other"))
    shutil.copytree(other / "bat", other / "rat")
    sets = tiny_overrides(tiny_corpus, tmp_path / "run", epochs=1) + [f'data.extra_roots=["{other}"]']
    run = build_run(load_config(None, sets + ["data.weights=[1.0, 3.0]"]), _setup("cpu"), resume=False, progress=False)
    assert run.classes == ["bat", "cat", "left", "yes", "rat"]  # data.root's words first, shared by word
    n_root = len(SpeechCommands(tiny_corpus, "training", heldout_words=["no", "seven"]))
    own = [i for i, y in enumerate(run.labels.tolist()) if run.classes[y] == "rat"]
    assert min(own) >= n_root  # the extra corpus's clips come after data.root's
    assert run.sampler.weights is not None and set(run.sampler.weights[:n_root]) == {1.0}
    assert set(run.sampler.weights[n_root:]) == {3.0}
    # A batch draws a shared word's clips mostly from the source weighted 3 to 1.
    shared = [i for b in run.sampler for i in b if run.classes[int(run.labels[i])] == "cat"]
    assert np.mean(np.array(shared) >= n_root) > 0.6
    train(load_config(None, sets), progress=False)  # and it trains
    with pytest.raises(ConfigError, match="one weight per source"):
        load_config(None, sets + ["data.weights=[1.0]"])


def test_conditions_give_the_scratch_encoder_a_copy_of_each_clip_that_half_of_a_batch_takes(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    from kws.train import CONDITIONED_SHARE, _batch, _setup, _to_float, build_run

    cfg = load_config(None, tiny_overrides(tiny_corpus, tmp_path / "run", epochs=1) + ["data.conditions=true"])
    run = build_run(cfg, _setup("cpu"), resume=False, progress=False)
    assert run.conditioned is not None and run.conditioned.shape == run.audio.shape
    clean, wet = _to_float(run.audio), _to_float(run.conditioned)
    changed = (clean - wet).abs().amax(dim=1) > 1e-3
    assert 0.3 < changed.float().mean() < 1.0  # rooms, noise, channels and codecs each at their odds
    # Made once, seeded: a second run of the same seed has the same copies.
    again = build_run(cfg, _setup("cpu"), resume=False, progress=False)
    assert torch.equal(again.conditioned, run.conditioned)
    # Without augmentation a batch is its clips as stored: each row clean or its conditioned copy.
    run.augmenter.eval()
    idx = torch.nonzero(changed).flatten()[:64].tolist()
    wave, _, _ = _batch(run, idx, torch.Generator().manual_seed(0))
    took = (wave - wet[idx]).abs().amax(dim=1) < 1e-6
    assert torch.all(took | ((wave - clean[idx]).abs().amax(dim=1) < 1e-6))
    assert abs(took.float().mean().item() - CONDITIONED_SHARE) < 0.2
    train(cfg, progress=False)  # and it trains


@pytest.mark.slow
def test_distillation_trains_caches_the_teacher_and_rebuilds_a_corrupt_cache(
    tiny_corpus: Path, tmp_path: Path, fake_pack, random_checkpoint: Path
) -> None:
    from kws.losses import DistillLoss

    # Rows of zeros have no teacher embedding and stay out of the mean.
    term = DistillLoss(4, 3)
    s, t = torch.randn(4, 4), torch.randn(4, 3)
    with torch.no_grad():
        assert float(term(s, torch.cat([t[:2], torch.zeros(2, 3)]))) == pytest.approx(float(term(s[:2], t[:2])))

    pack = fake_pack(tmp_path / "pack", words=("alpha", "bravo", "charlie"))
    cache = tmp_path / "cache"

    def run(name: str, epochs: int = 2, resume: bool = False) -> list[dict]:
        sets = tiny_overrides(tiny_corpus, tmp_path / name, epochs=epochs) + [
            f'data.real_pack="{pack}"', "data.real_heldout_fraction=0.4", f'data.teacher="{random_checkpoint}"',
            "loss.distill=1.0", f'data.cache_dir="{cache}"', "data.max_speakers=4",
        ]  # fmt: skip
        train(load_config(None, sets), resume=resume, progress=False)
        return read_rows(tmp_path / name)

    rows = run("a")
    assert all(torch.isfinite(torch.tensor(r["loss_distill"])) and 0 < r["loss_distill"] < 2 for r in rows)
    (cached,) = cache.glob("teacher-*.npz")
    stamp = cached.stat().st_mtime_ns
    state = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    assert state["extra"]["loss"]["terms.distill.project.weight"].shape == (128, 128)
    assert not any("distill" in k for k in state["state_dict"])  # the exported model is the plain student
    assert len(run("a", epochs=3, resume=True)) == 3
    run("b")
    assert cached.stat().st_mtime_ns == stamp  # reused, not recomputed
    with np.load(cached) as z:
        good = z["frames"].copy()
    from kws.data.real_pack import read_pack

    # Every pack clip, and the synthetic clips of max_speakers=4 of the 8 training speakers (4 words each).
    assert good.shape == (len(read_pack(pack, "training", 0.4)) + 4 * 4, 128)
    cached.write_bytes(b"not a cache")
    run("c")
    with np.load(cached) as z:
        assert np.array_equal(z["frames"], good)


def test_distillation_settings_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from kws.cli import main

    with pytest.raises(ConfigError, match="data.teacher .* and loss.distill"):
        load_config(None, ['data.teacher="speech-embedding"'])
    with pytest.raises(ConfigError, match="data.teacher .* and loss.distill"):
        load_config(None, ["loss.distill=1.0"])
    with pytest.raises(ConfigError, match="data.teacher is for the scratch encoder"):
        load_config(None, ['data.teacher="speech-embedding"', "loss.distill=1.0", 'model.stem="speech-embedding"'])
    code = main(["train", "--set", f'data.teacher="{tmp_path / "missing.pt"}"', "--set", "loss.distill=1.0",
                 "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "data.teacher" in err[0] and "missing.pt" in err[0]
