"""train(config) end to end on real Multi30k: result.json, W&B offline files, resume, averaging."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import sacrebleu
import torch

from attnlab.config import ExperimentConfig
from attnlab.train.checkpoints import average_checkpoints, load_checkpoint, step_checkpoints
from attnlab.train.run import train
from attnlab.train.wandb_offline import read_offline_run


def quick_config(mirror, cache, tmp_path, name="run", **train_overrides) -> ExperimentConfig:
    train_values = dict(max_steps=12, peak_lr=3e-3, warmup_steps=5, val_every_steps=6, threads=1,
                        log_every_steps=1, attention_sample=16)
    train_values.update(train_overrides)
    return ExperimentConfig.from_dict({
        "name": name, "output_dir": str(tmp_path / "runs"),
        "model": {"n_layers": 1, "d_model": 32, "d_ff": 64, "n_heads": 4},
        "data": {"vocab_size": 500, "max_tokens": 1024, "max_train_sentences": 2000, "max_eval_sentences": 40,
                 "mirror": mirror, "cache_dir": cache},
        "train": train_values,
        "decode": {"beam_size": 2, "max_len_b": 10},
        "logging": {"wandb": "offline", "group": "tests", "tags": ["unit"], "progress_bar": False, "quiet": True},
    })


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One short real run shared by the tests that only read its outputs."""
    from conftest import shared_data_dir

    mirror = shared_data_dir()
    if not (mirror / "multi30k" / "train.en.gz").exists():
        pytest.skip("real data mirror not found")
    tmp = tmp_path_factory.mktemp("run")
    config = quick_config(str(mirror), str(tmp / "cache"), tmp)
    return config, train(config)


def test_result_json_holds_real_scores(finished_run):
    config, result = finished_run
    run_dir = Path(result["run_dir"])
    assert json.loads((run_dir / "result.json").read_text())["bleu"] == result["bleu"]
    for key in ("bleu", "chrf", "sacrebleu_signature", "val_loss", "val_ppl", "params", "train_tokens_per_s",
                "wall_s", "attention"):
        assert result[key] is not None, key
    assert result["sacrebleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert result["val_ppl"] == pytest.approx(math.exp(result["val_loss"]))
    assert result["train_steps"] == 12 and result["train_tokens_per_s"] > 0
    # The score is sacreBLEU's on the hypotheses written to disk, against the raw references.
    hyps = (run_dir / "hypotheses" / "val.txt").read_text().splitlines()
    assert len(hyps) == 40
    import gzip
    refs = [" ".join(line.split())
            for line in gzip.open(Path(config.data.mirror) / "multi30k" / "val.de.gz", "rt")][:40]
    assert result["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert set(result["splits"]) == {"val", "test_2016_flickr"}
    assert set(result["attention"]) >= {"encoder_self", "decoder_self", "cross", "most_important_heads"}
    assert len(list((run_dir / "heatmaps").glob("*.png"))) == 9
    assert (run_dir / "config.yaml").exists() and len((run_dir / "attention.csv").read_text().splitlines()) == 1 + 3 * 4


def test_offline_wandb_run_has_metrics_config_tables_and_images(finished_run):
    _, result = finished_run
    run_dir = Path(result["run_dir"])
    [offline] = list((run_dir / "wandb").glob("offline-run-*"))
    assert result["wandb_sync"] == f"wandb sync {offline}"
    run = read_offline_run(offline)
    assert run["run"]["name"] == "run" and run["run"]["group"] == "tests" and run["run"]["tags"] == ["unit"]
    assert run["run"]["job_type"] == "train" and run["exit_code"] == 0
    assert run["config"]["model"]["d_model"] == 32 and run["config"]["params"] == result["params"]
    assert run["summary"]["final/bleu"] == pytest.approx(result["bleu"])
    assert run["summary"]["final/test_2016_flickr/bleu"] == pytest.approx(result["splits"]["test_2016_flickr"]["bleu"])
    assert run["summary"]["attention/cross/entropy"] == pytest.approx(result["attention"]["cross"]["entropy"])
    # Each validation curve's summary is its best value (define_metric), not its last.
    for key, best in (("val/bleu", max), ("val/loss", min)):
        assert run["summary"][key] == {best.__name__: pytest.approx(best(h[key] for h in run["history"] if key in h))}
    logged = set().union(*run["history"])
    assert {"train/loss", "train/lr", "train/tokens_per_s", "train/grad_norm", "val/loss", "val/ppl", "val/bleu",
            "val/chrf"} <= logged
    losses = [h["train/loss"] for h in run["history"] if "train/loss" in h]
    assert len(losses) == 12
    media = offline / "files" / "media"
    assert len(list((media / "images").glob("*.png"))) == 9
    [table] = list((media / "table" / "attention").glob("heads*.table.json"))
    content = json.loads(table.read_text())
    assert content["columns"][:3] == ["kind", "layer", "head"] and len(content["data"]) == 3 * 4
    assert list((media / "table").glob("samples*.table.json"))


def test_learning_curve_is_in_the_run_folder(finished_run):
    from attnlab.train.history import read_history

    _, result = finished_run
    history = read_history(result["run_dir"])
    train_steps = [h["step"] for h in history if "train/loss" in h]
    val = [h for h in history if "val/loss" in h]
    assert train_steps == list(range(1, 13))  # log_every_steps=1
    assert [h["step"] for h in val] == [6, 12]  # val_every_steps=6
    assert {"val/ppl", "val/bleu", "val/chrf"} <= set(val[-1])
    assert val[-1]["val/loss"] == pytest.approx(result["val_loss"], rel=1e-4)
    assert val[0]["train_seconds"] < val[1]["train_seconds"]


def test_checkpoints_load_translate_and_average_to_identity(finished_run, tmp_path):
    _, result = finished_run
    checkpoints = step_checkpoints(Path(result["run_dir"]) / "checkpoints")
    assert [p.name for p in checkpoints] == ["step0000006.ckpt", "step0000012.ckpt"]
    model, vocab, config = load_checkpoint(checkpoints[-1])
    assert config.model.d_model == 32 and len(vocab) == 500
    averaged = average_checkpoints([checkpoints[-1], checkpoints[-1]], tmp_path / "avg.ckpt")
    original = torch.load(checkpoints[-1], weights_only=False)["state_dict"]
    same = torch.load(averaged, weights_only=False)["state_dict"]
    assert original.keys() == same.keys()
    assert all(torch.equal(original[k], same[k]) for k in original)
    mean = torch.load(average_checkpoints(checkpoints, tmp_path / "mean.ckpt"), weights_only=False)["state_dict"]
    first = torch.load(checkpoints[0], weights_only=False)["state_dict"]
    key = "model.tgt_embed.weight"
    assert torch.allclose(mean[key], (first[key] + original[key]) / 2)


def test_resume_mid_epoch_gives_the_same_next_losses(mirror, cache, tmp_path):
    """Dropout on, checkpoint at step 4 in the middle of the first epoch: the resumed run's
    losses at steps 5-8 equal those of an uninterrupted run."""
    common = dict(max_steps=8, checkpoint_every_steps=4, val_every_steps=100, val_bleu=False, attention_stats=False)
    straight = quick_config(mirror, cache, tmp_path, "straight", **common)
    train(straight)
    interrupted = quick_config(mirror, cache, tmp_path, "resumed", **{**common, "max_steps": 4})
    train(interrupted)
    train(dataclasses.replace(interrupted, train=dataclasses.replace(interrupted.train, max_steps=8)))

    def losses(name):
        """(step, loss) of the run's last W&B run: the one that reached the highest step (two
        runs started within one second have folder names that do not sort by time)."""
        runs = [[(h["trainer/global_step"], h["train/loss"]) for h in read_offline_run(offline)["history"]
                 if "train/loss" in h] for offline in (tmp_path / "runs" / name / "wandb").glob("offline-run-*")]
        return max(runs, key=lambda r: r[-1][0])

    expected, resumed = losses("straight")[4:], losses("resumed")
    assert len(expected) == 4
    assert [step for step, _ in resumed] == [step for step, _ in expected]
    assert [loss for _, loss in resumed] == pytest.approx([loss for _, loss in expected], abs=1e-5)


def test_overfits_a_few_batches(tmp_path, cache):
    """Eight sentence pairs, no smoothing or dropout: the loss goes to nearly zero."""
    src = [f"sentence number {i} is here" for i in range(8)]
    tgt = [f"satz nummer {i} ist da" for i in range(8)]
    (tmp_path / "t.en").write_text("\n".join(src) + "\n")
    (tmp_path / "t.de").write_text("\n".join(tgt) + "\n")
    files = {"train": f"{tmp_path}/t.en,{tmp_path}/t.de", "val": f"{tmp_path}/t.en,{tmp_path}/t.de"}
    config = ExperimentConfig.from_dict({
        "name": "overfit", "output_dir": str(tmp_path / "runs"),
        "model": {"n_layers": 1, "d_model": 64, "d_ff": 128, "n_heads": 4, "dropout": 0.0},
        "data": {"corpus": "custom", "custom_files": files, "test_splits": [], "vocab_size": 300, "cache_dir": cache},
        "train": {"max_steps": 150, "peak_lr": 3e-3, "warmup_steps": 10, "label_smoothing": 0.0, "threads": 1,
                  "val_bleu": False, "attention_stats": False},
        "decode": {"beam_size": 1},
        "logging": {"wandb": "disabled", "progress_bar": False, "quiet": True},
    })
    result = train(config)
    assert result["val_loss"] < 0.05
    assert result["bleu"] == pytest.approx(100.0)


def test_a_failed_run_still_finishes_its_wandb_run(mirror, cache, tmp_path):
    config = quick_config(mirror, cache, tmp_path, "diverges", peak_lr=1e6, warmup_steps=1, max_steps=30)
    with pytest.raises(FloatingPointError, match="diverged"):
        train(config)
    offline = next((tmp_path / "runs" / "diverges" / "wandb").glob("offline-run-*"))
    assert read_offline_run(offline)["exit_code"] == 1


@pytest.mark.ddp
def test_ddp_on_two_cpu_processes_trains_and_logs_once(mirror, cache, tmp_path):
    """ddp_spawn, 2 processes, gloo: one result, one W&B run, steps and tokens over both ranks."""
    import time

    config = quick_config(mirror, cache, tmp_path, "ddp", accelerator="cpu", devices=2, strategy="ddp_spawn",
                          max_steps=6, val_every_steps=3)
    result = train(config)
    run_dir = Path(result["run_dir"])
    stats = json.loads((run_dir / "train_stats.json").read_text())
    assert stats["world_size"] == 2 and stats["train_steps"] == result["train_steps"] == 6
    assert [p.name for p in step_checkpoints(run_dir / "checkpoints")] == ["step0000003.ckpt", "step0000006.ckpt"]
    [offline] = list((run_dir / "wandb").glob("offline-run-*"))  # rank 1 logged nothing of its own
    # The spawned rank 0 and the main process share the run through the wandb service, which
    # may write the final records just after finish() returns in the main process.
    deadline = time.time() + 30
    while "exit_code" not in (run := read_offline_run(offline)) and time.time() < deadline:
        time.sleep(0.5)
    assert run["exit_code"] == 0 and run["run"]["name"] == "ddp"
    assert {"train/loss", "val/loss", "val/bleu"} <= set().union(*run["history"])
    assert run["summary"]["final/bleu"] == pytest.approx(result["bleu"])
