"""`train(config) -> result`: one run from config to a scored, logged run folder (its file
names: attnlab/results.py).

    <output_dir>/<name>/
        config.yaml          the resolved config
        checkpoints/         step<N>.ckpt (the last `keep_checkpoints`)
        hypotheses/<split>.txt  final translations, one per source line
        heatmaps/*.png       attention of a few fixed validation sentences
        attention.csv        statistics per kind, layer and head
        metrics.jsonl        learning curve: training loss and every validation (train/history.py)
        result.json          scores, PPL, params, throughput, attention summary, launch (results.RunResult)
        ranks.json           each rank of a multi-process run: host, pid, allocator, devices (train/ranks.py)
        wandb/               the W&B run (offline runs: `wandb sync` it later)
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

from attnlab import allocator
from attnlab.analysis.attention import TABLE_COLUMNS, attention_statistics, head_importance, rows, summarise
from attnlab.analysis.heatmaps import attention_heatmaps
from attnlab.config import ExperimentConfig
from attnlab.data.datamodule import EncodedSplit, TranslationDataModule, reuse_prepared
from attnlab.data.fetch import cache_dir
from attnlab.data.tokenizer import Vocabulary
from attnlab.errors import AttnlabError, LaunchError, StopTimeReached
from attnlab.model import Transformer, build_model, count_parameters
from attnlab.paths import check_writable_folder
from attnlab.results import (
    ATTENTION_FILE,
    CHECKPOINTS,
    CONFIG_FILE,
    HEATMAPS,
    HISTORY_FILE,
    HYPOTHESES,
    RESULT_FILE,
    STATS_FILE,
    RunResult,
    hypotheses_file,
)
from attnlab.train.callbacks import (
    STOP_AT_ENV,
    EndsRun,
    FinalCheckpoint,
    TrainClock,
    stop_time,
)
from attnlab.train.checkpoints import check_resumable, latest_checkpoint
from attnlab.train.evaluation import ValidationScorer, check_lengths, score, translate
from attnlab.train.history import History, read_history
from attnlab.train.launch import (
    Launch,
    Plan,
    all_or_none,
    children_run,
    gpu_memory_share,
    join,
    leave,
    limit_gpu_memory,
    resolve,
    share,
)
from attnlab.train.module import BATCHNORM_SPREAD, GRAD_NORM, TranslationModule
from attnlab.train.ranks import Recount, SameRun
from attnlab.train.rundir import move_aside, must_move_aside
from attnlab.train.tracking import finish, make_logger

HEATMAP_SENTENCES = 3


def _trainer(config: ExperimentConfig, run_dir: Path, logger, callbacks: list[pl.Callback],
             clock: TrainClock) -> pl.Trainer:
    t = config.train
    val_interval = {"val_check_interval": t.val_every_steps * t.accumulate_grad_batches,
                    "check_val_every_n_epoch": None} if t.val_every_steps else {}
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / CHECKPOINTS, filename="step{step:07d}", auto_insert_metric_name=False,
        monitor="global_step", mode="max", save_top_k=t.keep_checkpoints,
        every_n_train_steps=t.checkpoint_every_steps)
    final = FinalCheckpoint(run_dir / CHECKPOINTS)
    return pl.Trainer(
        accelerator=t.accelerator, devices=t.devices, strategy=t.strategy, num_nodes=t.num_nodes,
        precision=t.precision, max_steps=t.max_steps if t.max_steps is not None else -1, max_epochs=t.max_epochs,
        max_time={"minutes": t.max_minutes} if t.max_minutes else None,
        gradient_clip_val=t.grad_clip, accumulate_grad_batches=t.accumulate_grad_batches,
        logger=logger if logger is not None else False,
        callbacks=[checkpoint, clock, History(run_dir, t.log_every_steps, clock), *callbacks, final],
        enable_progress_bar=config.logging.progress_bar and not config.logging.quiet,
        enable_model_summary=not config.logging.quiet, use_distributed_sampler=False,  # our sampler shards
        default_root_dir=str(run_dir), log_every_n_steps=t.log_every_steps, num_sanity_val_steps=0, **val_interval,
    )


def _validation_loss(model: Transformer, split: EncodedSplit, max_tokens: int) -> float:
    """Mean NLL per target token over the whole split (PPL = exp of it)."""
    from attnlab.data.batching import TokenBatchSampler

    model.eval()
    device = next(model.parameters()).device
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for indices in TokenBatchSampler(split.src_lengths, split.tgt_lengths, max_tokens, shuffle=False):
            batch = {k: v.to(device) for k, v in split.collate(indices).items()}
            logits = model(batch["src"], batch["tgt_in"]).float()
            nll += torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["tgt_out"].flatten(),
                                                     ignore_index=model.pad_id, reduction="sum").item()
            tokens += int((batch["tgt_out"] != model.pad_id).sum())
    return nll / max(tokens, 1)


def _attention(model: Transformer, split: EncodedSplit, vocab: Vocabulary, sample: int, run_dir: Path):
    """Statistics and head importance on the first `sample` validation sentences, and heatmaps."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in split.collate(list(range(min(sample, len(split))))).items()}
    stats = attention_statistics(model, batch["src"], batch["tgt_in"])
    importance = head_importance(model, batch["src"], batch["tgt_in"], batch["tgt_out"])
    images = []
    for i in range(min(HEATMAP_SENTENCES, len(split))):
        one = split.collate([i])
        pieces = lambda ids: [vocab.sp.id_to_piece(int(t)) for t in ids]  # noqa: E731
        images += attention_heatmaps(model, one["src"].to(device), one["tgt_in"].to(device), pieces(one["src"][0]),
                                     pieces(one["tgt_in"][0]), run_dir / HEATMAPS, f"val{i}")
    return stats, importance, images


def evaluate_model(model: Transformer, vocab: Vocabulary, config: ExperimentConfig, splits: dict[str, EncodedSplit],
                   run_dir: Path) -> dict[str, Any]:
    """Translate and score every split with the final decoding settings; write hypotheses."""
    out: dict[str, Any] = {}
    (run_dir / HYPOTHESES).mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        start = time.perf_counter()
        hypotheses = translate(model, split, vocab, config.decode, config.data.max_tokens)
        seconds = time.perf_counter() - start
        hypotheses_file(run_dir, name).write_text("".join(h + "\n" for h in hypotheses))
        out[name] = {**score(hypotheses, split.tgt_text).as_dict(), "decode_seconds": round(seconds, 2),
                     "sentences": len(split), "beam_size": config.decode.beam_size}
    return out


def _log_final(logger, result: dict[str, Any], table: list[list[Any]], images: list[Path],
               samples: list[list[str]]) -> None:
    if logger is None:
        return
    import wandb

    # What a comparison needs: the final scores of every split (valid and tests), PPL, params, tokens/s.
    flat = {f"final/{k}": v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for split, scores in result["splits"].items():
        flat.update({f"final/{split}/{k}": v for k, v in scores.items() if k in ("bleu", "chrf")})
    for kind, stats in result["attention"].items():
        if isinstance(stats, dict):
            flat.update({f"attention/{kind}/{stat}": value for stat, value in stats.items()})
    logger.experiment.summary.update(flat)
    logger.log_table("attention/heads", columns=TABLE_COLUMNS, data=table)
    logger.log_table("samples", columns=["source", "reference", "hypothesis"], data=samples)
    logger.experiment.log({"heatmaps": [wandb.Image(str(p), caption=p.stem) for p in images]})


def train(config: ExperimentConfig, resume: bool = True, extra: dict[str, Any] | None = None,
          callbacks: list[pl.Callback] | None = None, replace_changed: bool = False) -> dict[str, Any]:
    """Train, evaluate and log one run; returns result.json's content (on rank 0; {} elsewhere).
    `extra` goes into the W&B config and result.json (a sweep's trial number, say); `callbacks`
    join the Trainer's (a pruning callback, say). An existing run folder is resumed if it holds
    the same config; `resume=False`, or `replace_changed` for a folder of another config, keeps
    the old folder beside the new run (train/rundir.py). Under several processes rank 0 alone
    decides about and writes the run folder; the others follow its plan (train/launch.py)."""
    start = time.time()  # wall clock: the clock of spawned ranks too
    check_writable_folder(config.output_dir, "output_dir")
    check_writable_folder(cache_dir(config.data.cache_dir), "data.cache_dir")
    launch = resolve(config.train)  # hardware and launch checked before any compute (train/launch.py)
    limit_gpu_memory()
    if launch.joins_early:
        join(launch, config.train.rendezvous_timeout)
    try:
        with reuse_prepared():  # read and encoded once, however often Lightning asks
            return _train(config, launch, resume, extra, callbacks or [], replace_changed, start)
    finally:
        if launch.world_size > 1:
            leave()


def _plan(config: ExperimentConfig, launch: Launch, run_dir: Path, resume: bool, replace_changed: bool) -> Plan:
    """Rank 0's decisions, shared with every rank: a refusal stops them all with its message."""
    plan, refusal = None, None
    if launch.is_rank_zero:
        try:
            move = must_move_aside(config, run_dir, resume, replace_changed)  # a folder of another config: refused
            ckpt = latest_checkpoint(run_dir / CHECKPOINTS) if resume and not move else None
            if ckpt is not None:
                check_resumable(ckpt, launch.world_size * config.train.accumulate_grad_batches)
            plan = Plan(resume_from=str(ckpt) if ckpt else None, move_aside=move)
        except AttnlabError as error:
            plan, refusal = Plan(error=str(error)), error
    plan = share(launch, plan)
    if refusal is not None:
        raise refusal
    if plan.error is not None:
        raise LaunchError(f"rank 0 refused the run: {plan.error}")
    return plan


def _train(config: ExperimentConfig, launch: Launch, resume: bool, extra: dict[str, Any] | None,
           callbacks: list[pl.Callback], replace_changed: bool, start: float) -> dict[str, Any]:
    run_dir = Path(config.output_dir) / config.name
    plan = _plan(config, launch, run_dir, resume, replace_changed)
    if config.logging.quiet:
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    pl.seed_everything(config.train.seed, workers=True, verbose=False)

    with all_or_none(launch):  # a data error on one node stops every node, not only its own
        data, model = _data_and_model(config)
    vocab = data.vocab
    params = count_parameters(model)
    if launch.is_rank_zero:
        _set_up_folder(config, run_dir, plan)

    module = TranslationModule(model, config.train, ValidationScorer(vocab, data.data.valid.tgt_text),
                               checkpoint_extra={"config": config.to_dict(), "vocab_model": str(vocab.path)},
                               decode=config.decode)
    logger = make_logger(config, run_dir, {"params": params, "vocab_size": len(vocab), **(extra or {})}) \
        if launch.is_rank_zero else None
    same_run = SameRun(config.definition(), vocab.path, run_dir, config.train.log_every_steps)
    clock = TrainClock(run_dir / STATS_FILE, vocab.pad_id, config.train.log_every_steps,
                       config.train.max_train_minutes, stop_time())
    trainer = _trainer(config, run_dir, logger, [*callbacks, same_run, Recount()], clock)
    failed, sync_command = True, None
    try:
        with children_run(launch, run_dir / CONFIG_FILE, plan, trainer, config.train.threads):
            trainer.fit(module, datamodule=data, ckpt_path=plan.resume_from)
        ended = _ending(callbacks, clock, trainer.global_step)
        if not launch.is_rank_zero:
            failed = False
            return {}
        if ended is not None:  # a pruned trial, a stop time: no final evaluation; an ending, not a failure
            failed = False
            raise ended
        totals = json.loads((run_dir / STATS_FILE).read_text())  # from rank 0, spawned or not
        result = _final(config, model, vocab, data, run_dir, params, logger, totals)
        result["wall_s"] = round(time.time() - start, 1)
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        result["allocator"] = allocator.active() or "system"
        ranks = same_run.read(run_dir)
        result["launch"] = {"kind": launch.kind, "world_size": launch.world_size, "num_nodes": launch.num_nodes,
                            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "ranks": ranks["ranks"],
                            "gpu_memory_fraction": gpu_memory_share()}
        if "weights_max_rank_difference" in ranks:
            result["weights_max_rank_difference"] = ranks["weights_max_rank_difference"]
        result["final_checkpoint"] = str(FinalCheckpoint(run_dir / CHECKPOINTS).path(totals["train_steps"]))
        failed = False
    finally:
        wandb_id = logger.experiment.id if logger is not None else None
        sync_command = finish(logger, failed) if logger is not None else None
    result["wandb_run_id"], result["wandb_sync"] = wandb_id, sync_command
    result["resumed_from"] = plan.resume_from
    result.update(extra or {})
    result["fixed_seconds"] = fixed_seconds(start, totals)
    result = RunResult.from_dict(result).as_dict()
    (run_dir / RESULT_FILE).write_text(json.dumps(result, indent=2))
    if sync_command and not config.logging.quiet:
        print(f"W&B run saved offline; upload it with: {sync_command}")
    return result


def _data_and_model(config: ExperimentConfig) -> tuple[TranslationDataModule, Transformer]:
    data = TranslationDataModule(config.data)
    data.prepare_data()  # every data error surfaces here, before the model exists
    data.setup("fit")
    vocab = data.vocab
    model = build_model(config.model, len(vocab), vocab.pad_id, vocab.bos_id, vocab.eos_id)
    for split in (data.data.train, data.data.valid, *data.data.tests.values()):  # fail now, not mid-run
        check_lengths(model, split, targets=True)
    return data, model


def fixed_seconds(start: float, totals: dict[str, Any]) -> dict[str, float | None]:
    """What a run costs besides training: from train() to the end of the first step (set-up,
    data, model, W&B, the first step), and from the end of training to result.json (the final
    evaluation, statistics, W&B): the cost per trial that long-lived workers must keep small."""
    first, ended = totals.get("first_step_at"), totals.get("training_ended_at")
    return {"start_to_first_step": round(first - start, 2) if first else None,
            "training_end_to_result": round(time.time() - ended, 2) if ended else None}


def _set_up_folder(config: ExperimentConfig, run_dir: Path, plan: Plan) -> None:
    """Rank 0, once the run is sure to start: the old folder aside if planned, the resolved config
    (what Lightning's launcher has the other local ranks train), a fresh curve for a fresh run."""
    if plan.move_aside:
        print(f"{run_dir}: the earlier run is kept as {move_aside(run_dir)}")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    if plan.resume_from is None:
        (run_dir / HISTORY_FILE).unlink(missing_ok=True)


def _ending(callbacks: list[pl.Callback], clock: TrainClock, step: int) -> Exception | None:
    """Why the run ends after fit without its final evaluation (rank 0), or None."""
    if clock.stopped_at_stop_time:
        return StopTimeReached(f"stopped at its stop time (${STOP_AT_ENV}) after step {step}, checkpointed there; "
                               "running it again resumes it")
    return next((e for c in callbacks if isinstance(c, EndsRun) and (e := c.ending()) is not None), None)


def training_statistics(run_dir: Path) -> dict[str, Any]:
    """Means over the logged training steps: the gradient norm of each layer, and with
    BatchNorm the spread of its batch statistics (None without)."""
    records = [r for r in read_history(run_dir) if not any(k.startswith("val/") for k in r)]

    def mean(key: str) -> float | None:
        values = [r[key] for r in records if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    layers = sorted({k for r in records for k in r if k.startswith(f"{GRAD_NORM}/")})
    return {"grad_norm_by_layer": {k.removeprefix(f"{GRAD_NORM}/"): mean(k) for k in layers},
            "batchnorm_spread": mean(BATCHNORM_SPREAD)}


def _final(config: ExperimentConfig, model: Transformer, vocab: Vocabulary,
           data: TranslationDataModule, run_dir: Path, params: int, logger, totals: dict[str, Any]) -> dict[str, Any]:
    valid = data.data.valid
    val_loss = _validation_loss(model, valid, config.data.max_tokens)
    splits = {config.data.valid_split: valid, **data.data.tests}
    scores = evaluate_model(model, vocab, config, splits, run_dir)
    attention_summary, table, images = {}, [], []
    if config.train.attention_stats:
        stats, importance, images = _attention(model, valid, vocab, config.train.attention_sample, run_dir)
        attention_summary, table = summarise(stats, importance), rows(stats, importance)
        with open(run_dir / ATTENTION_FILE, "w") as f:
            f.write(",".join(TABLE_COLUMNS) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in table))
    dev = scores[config.data.valid_split]
    result = {
        "name": config.name, "bleu": dev["bleu"], "chrf": dev["chrf"],
        "sacrebleu_signature": dev["sacrebleu_signature"],
        "chrf_signature": dev["chrf_signature"], "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50)),
        "params": params, **totals,
        "train_tokens_per_s": totals["train_tokens"] / totals["train_seconds"] if totals["train_seconds"] else None,
        "splits": scores, "attention": attention_summary, **training_statistics(run_dir),
        "run_dir": str(run_dir),
    }
    hyps = hypotheses_file(run_dir, config.data.valid_split).read_text().splitlines()
    samples = [[valid.src_text[i], valid.tgt_text[i], hyps[i]] for i in range(min(8, len(valid)))]
    _log_final(logger, result, table, images, samples)
    return result
