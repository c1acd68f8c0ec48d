"""`posttrain rm`: WARM, weight-averaged reward models (Ramé et al. 2024, arXiv 2401.12187), top to bottom.

The algorithm (../shared/ALGORITHMS.md, WARM):
  1. the shared init: the SFT checkpoint plus a fresh linear head with one output (the scalar reward);
  2. M fine-tunings of that init on the same preference pairs with the Bradley-Terry loss
         L = -log sigma(r(x, y_chosen) - r(x, y_rejected)),
     each with its own diversity: seed and data order, a learning rate and a dropout from configured lists;
  3. the reward model is the weight average phi = (1/M) sum_m phi_m (posttrain/merging.py). Fine-tunes of one
     init are linearly mode-connected, so the average works as one model: it costs one model's inference,
     unlike the prediction ensemble (mean of the M scores), and averaging damps what a single run memorised,
     e.g. flipped labels (`label_noise`).

The stage: the M members run as parallel Ray tasks (posttrain.cluster.run_tasks), each with its own resources
(`num_gpus=1` on a GPU cluster; on a CPU machine they share the cores), each training with TRL's
RewardTrainer (the Bradley-Terry loss above) and writing its own HF dir under `members/`. The driver averages
them into the output dir and reports the held-out pairwise accuracy of every member, of the average and of
the ensemble. `compare_label_noise` trains the same recipe on label-flipped data under `variants/` to show
whether the average degrades less than its members.

Output dir (the averaged RM at the top, loadable with AutoModelForSequenceClassification):
  config.json, model.safetensors, tokenizer*   the weight average
  init/                                        the shared init (SFT + fresh head)
  members/<m>/                                 each member: HF dir, posttrain.json, metrics.jsonl, tensorboard/,
                                               eval_scores.json, DONE
  variants/noise-<p>/                          the same for a label-noise variant (its own members/)
  report.json, posttrain.json, metrics.jsonl, tensorboard/, DONE (last)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
from pathlib import Path

import torch

from posttrain import artifacts
from posttrain import config as cfg
from posttrain.config import doc
from posttrain.errors import UserError
from posttrain.hooks import NO_HOOKS, Hooks
from posttrain.models import Lora

# ----------------------------------------------------------------------------------------------------
# Preference pairs


def read_pairs(path: str | Path) -> list[dict]:
    """Rows with `chosen` and `rejected` (strings or message lists) and optionally `prompt` (TRL's
    preference format, explicit or implicit prompt)."""
    from posttrain import data

    rows = data.read_rows(path, validate=False)
    for row in rows:
        where = row.get("_where", str(path))
        for key in ("chosen", "rejected"):
            if key not in row:
                raise UserError(f"{where}: a preference row needs 'chosen' and 'rejected' (missing '{key}')")
        for key in ("prompt", "chosen", "rejected"):
            value = row.get(key)
            if value is None and key == "prompt":
                continue
            if isinstance(value, list):
                data.validate_messages(value, f"{where} ({key})")
            elif not isinstance(value, str):
                raise UserError(f"{where}: '{key}' must be a string or a list of messages")
    return rows


def encode_pairs(tokenizer, rows: list[dict], max_length: int) -> list[dict]:
    from rewards.reward_model import encode

    return [
        {
            "chosen_ids": encode(tokenizer, r.get("prompt"), r["chosen"], max_length),
            "rejected_ids": encode(tokenizer, r.get("prompt"), r["rejected"], max_length),
        }
        for r in rows
    ]


def flip_labels(pairs: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[int]]:
    """Swap chosen and rejected in round(fraction * n) pairs picked by `seed` (the same for every member:
    the noise is in the data, as in the paper's corrupted-preference experiments)."""
    if not 0.0 <= fraction <= 1.0:
        raise UserError(f"label_noise must be in [0, 1], got {fraction}")
    flipped = sorted(random.Random(seed).sample(range(len(pairs)), round(fraction * len(pairs))))
    out = list(pairs)
    for i in flipped:
        out[i] = {"chosen_ids": pairs[i]["rejected_ids"], "rejected_ids": pairs[i]["chosen_ids"]}
    return out, flipped


def accuracy(chosen: list[float], rejected: list[float]) -> float:
    """Pairwise accuracy: the share of pairs where the chosen reply scores strictly higher."""
    return sum(c > r for c, r in zip(chosen, rejected)) / max(len(chosen), 1)


def bt_loss(chosen: list[float], rejected: list[float]) -> float:
    """Mean Bradley-Terry loss -log sigma(r_chosen - r_rejected) (log 2 = no preference)."""
    return sum(math.log1p(math.exp(-(c - r))) if c - r > -30 else r - c for c, r in zip(chosen, rejected)) / max(
        len(chosen), 1
    )


# ----------------------------------------------------------------------------------------------------
# 1. The shared init


def build_init(init_spec: str, out: Path, seed: int) -> Path:
    """`out`: the init model as an AutoModelForSequenceClassification with one output. A causal LM gets a
    fresh head drawn from `seed`; a dir that already is a 1-output classifier keeps its head."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if artifacts.is_done(out):
        return out
    from posttrain import models

    src = models.resolve(init_spec)
    artifacts.require_done(src, "init checkpoint")
    src_config = AutoConfig.from_pretrained(src)
    is_rm = any(a.endswith("ForSequenceClassification") for a in src_config.architectures or [])
    if is_rm and src_config.num_labels != 1:
        raise UserError(f"{init_spec}: a classifier with {src_config.num_labels} outputs, not a reward model")
    torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "score.weight newly initialised" is the point here, not a warning
    try:
        model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=1, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
    tokenizer = AutoTokenizer.from_pretrained(src)
    model.config.pad_token_id = tokenizer.pad_token_id
    staging = artifacts.atomic_dir(out)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    artifacts.write_manifest(
        staging, stage="rm-init", config={"init": init_spec, "seed": seed}, inputs={"init": str(src)}
    )
    artifacts.mark_done(staging)
    return artifacts.publish_dir(staging, out)


# ----------------------------------------------------------------------------------------------------
# 2. One member (runs inside a Ray task)


def _trainer(model, tokenizer, train: list[dict], job: dict, out: Path):
    import datasets
    from trl import RewardConfig, RewardTrainer

    from posttrain.checkpoint import atomic_checkpoints, metrics_callbacks

    c = job["config"]
    from posttrain import models

    use_bf16 = models.use_bf16(c["bf16"])
    args = RewardConfig(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=c["batch_size"],
        num_train_epochs=c["epochs"],
        max_steps=c["max_steps"],
        learning_rate=job["learning_rate"],
        lr_scheduler_type=c["lr_scheduler"],
        warmup_steps=c["warmup_steps"],
        weight_decay=c["weight_decay"],
        max_grad_norm=c["max_grad_norm"],
        gradient_accumulation_steps=c["gradient_accumulation_steps"],
        bf16=use_bf16,
        gradient_checkpointing=False,
        disable_dropout=False,
        max_length=None,
        center_rewards_coefficient=c["center_rewards_coefficient"],
        seed=job["seed"],
        data_seed=job["seed"],
        logging_steps=c["logging_steps"],
        save_strategy="steps",
        save_steps=c["save_steps"],
        save_total_limit=2,
        report_to="none",
        dataloader_num_workers=0,
        disable_tqdm=not job["progress"],
        use_cpu=not torch.cuda.is_available(),
        pad_to_multiple_of=None,
    )
    # TRL's RewardTrainer (Bradley-Terry loss) with atomically published checkpoints
    return atomic_checkpoints(RewardTrainer)(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(train),
        processing_class=tokenizer,
        callbacks=metrics_callbacks(out),
    )


def _freeze(model, freeze_embeddings: bool, freeze_layers: int) -> None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if freeze_embeddings:
        base.get_input_embeddings().weight.requires_grad_(False)
    for layer in base.model.layers[:freeze_layers]:
        layer.requires_grad_(False)


def _classifier_lora(model, lora: dict):
    """peft LoRA on a sequence classifier (lora["r"] > 0). Not models.apply_lora: its CAUSAL_LM wrapper needs
    generation hooks a classifier lacks. SEQ_CLS also trains the head in full (modules_to_save=["score"])."""
    if lora["r"] <= 0:
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                        target_modules=lora["target_modules"], task_type="SEQ_CLS")  # fmt: skip
    return get_peft_model(model, config)


def _save_member(model, tokenizer, out: Path, evals: list[dict], c: dict) -> dict:
    """The member's HF dir and its held-out scores (eval_scores.json), moved into `out` from a staging dir."""
    from rewards.reward_model import RewardModelScorer

    staging = artifacts.atomic_dir(out / "model")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    scorer = RewardModelScorer.from_model(
        model, tokenizer, batch_size=c["batch_size"] * 2, max_length=c["max_length"]
    )
    scores = {"chosen": scorer.score_ids([p["chosen_ids"] for p in evals]),
              "rejected": scorer.score_ids([p["rejected_ids"] for p in evals])}  # fmt: skip
    (staging / "eval_scores.json").write_text(json.dumps(scores))
    for item in staging.iterdir():
        os.replace(item, out / item.name)
    staging.rmdir()
    return scores


def train_member(job: dict) -> dict:
    """Fine-tune the shared init into members/<m>; return its held-out scores. A member whose dir is
    already DONE is not retrained (resume)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = Path(job["out"])
    if artifacts.is_done(out):
        scores = json.loads((out / "eval_scores.json").read_text())
        return {"member": job["member"], "skipped": True, **scores}
    torch.set_num_threads(job["threads"])
    c = job["config"]
    out.mkdir(parents=True, exist_ok=True)
    init = Path(job["init"])
    tokenizer = AutoTokenizer.from_pretrained(init)
    model = AutoModelForSequenceClassification.from_pretrained(
        init, dtype=torch.float32, attention_dropout=job["dropout"]
    )
    job.get("hooks", NO_HOOKS).on_task_start(f"member {job['member']}")
    lora = c["lora"]
    model = _classifier_lora(model, lora)
    _freeze(model, c["freeze_embeddings"], c["freeze_layers"])
    trainer = _trainer(model, tokenizer, job["train"], job, out)
    ckpts = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    trainer.train(resume_from_checkpoint=str(ckpts[-1]) if ckpts else None)

    model = trainer.model.merge_and_unload() if lora["r"] > 0 else trainer.model  # average merged weights
    scores = _save_member(model, tokenizer, out, job["eval"], c)
    chosen, rejected = scores["chosen"], scores["rejected"]
    summary = {
        "learning_rate": job["learning_rate"],
        "dropout": job["dropout"],
        "seed": job["seed"],
        "steps": trainer.state.global_step,
        "eval_accuracy": accuracy(chosen, rejected),
    }
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # optimiser states: only resume needed them
    artifacts.write_manifest(
        out,
        stage="rm-member",
        config=c,
        extra={"summary": summary},
        inputs={
            "init": str(init),
            "init_sha256": job["init_sha256"],
            "train_sha256": job["train_sha256"],
            "label_noise": job["label_noise"],
        },
    )
    artifacts.mark_done(out)
    return {"member": job["member"], "skipped": False, **scores}


# ----------------------------------------------------------------------------------------------------
# 3. The weight average


def average_members(member_dirs: list[Path], out: Path) -> Path:
    """Write phi = (1/M) sum phi_m of finished members into `out` (files moved in, one by one, after the
    whole average is written). Members must be fine-tunes of one init: their manifests' init hashes must
    agree, and their configs must describe one architecture."""
    from safetensors.torch import save_file

    from posttrain import merging

    if not member_dirs:
        raise UserError("no members to average")
    inits, configs = [], []
    for d in member_dirs:
        artifacts.require_done(d, "reward-model member")
        manifest = Path(d) / artifacts.MANIFEST
        init_hash = json.loads(manifest.read_text())["inputs"].get("init_sha256") if manifest.is_file() else None
        if not init_hash:
            raise UserError(
                f"{d}: not a `posttrain rm` member (its posttrain.json records no init); "
                "WARM averages only fine-tunes of one shared init"
            )
        inits.append(init_hash)
        configs.append(json.loads((Path(d) / "config.json").read_text()))
    for d, init_hash, conf in zip(member_dirs[1:], inits[1:], configs[1:]):
        if init_hash != inits[0]:
            raise UserError(
                f"cannot average {member_dirs[0]} and {d}: they were fine-tuned from different inits "
                f"({inits[0][:12]} vs {init_hash[:12]}); WARM needs one shared init"
            )
        for key in ("architectures", "model_type", "num_hidden_layers", "hidden_size", "vocab_size", "num_labels"):
            if conf.get(key) != configs[0].get(key):
                raise UserError(
                    f"cannot average {member_dirs[0]} and {d}: different architectures "
                    f"({key}: {configs[0].get(key)} vs {conf.get(key)})"
                )
    state = merging.average(member_dirs)  # also refuses mismatched keys/shapes/dtypes, naming the key
    staging = artifacts.atomic_dir(out / "average")
    save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
    tokenizer_files = ("special_tokens_map.json", "chat_template.jinja")
    for f in Path(member_dirs[0]).iterdir():
        if f.is_file() and (f.name.startswith("tokenizer") or f.name in tokenizer_files):
            shutil.copy2(f, staging / f.name)
    config = dict(configs[0], attention_dropout=0.0)  # members' dropouts differ; the average is for inference
    (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    for item in staging.iterdir():
        os.replace(item, Path(out) / item.name)
    staging.rmdir()
    return Path(out)


# ----------------------------------------------------------------------------------------------------
# The stage


@dataclasses.dataclass
class Config:
    init: str = doc(
        "runs/demo/sft", "shared init: the SFT output dir (or any model spec: HF dir, .gguf, 'tiny:...')"
    )
    data: str = doc(
        "data/demo/prefs.jsonl", "preference pairs: 'prompt' + 'chosen'/'rejected' (strings or messages)"
    )
    eval_data: str | None = doc(None, "held-out pairs (default: the first eval_size rows of data)")
    eval_size: int = doc(64, "rows of data held out for accuracy when eval_data is not given")
    max_examples: int | None = doc(None, "use only the first N training pairs (None = all)")
    output_dir: str = doc("runs/rm", "where the averaged RM, members/, report and metrics go")
    num_members: int = doc(4, "M: reward models fine-tuned in parallel and weight-averaged")
    learning_rates: list[float] = doc([1e-5, 4e-5, 1e-4], "member m uses learning_rates[m % len]")
    dropouts: list[float] = doc([0.05, 0.1], "attention dropout of member m: dropouts[m % len]")
    seed: int = doc(0, "head init and label-noise seed; member m's data order and dropout seed is seed + m")
    label_noise: float = doc(0.0, "fraction of training pairs whose chosen/rejected are swapped")
    compare_label_noise: list[float] = doc(
        [],
        "also train the recipe at these label-noise fractions (variants/noise-<p>/) and report them side by side",
    )
    max_length: int = doc(512, "tokens per sequence (longer prompts are cut from the start)")
    epochs: float = doc(1.0, "passes over the training pairs")
    max_steps: int = doc(-1, "optimizer steps per member (overrides epochs when > 0)")
    batch_size: int = doc(8, "pairs per micro-batch")
    gradient_accumulation_steps: int = doc(1, "micro-batches per optimizer step")
    lr_scheduler: str = doc("linear", "HF scheduler name: linear, cosine, constant, ...")
    warmup_steps: int = doc(0, "linear warm-up steps")
    weight_decay: float = doc(0.0, "AdamW weight decay")
    max_grad_norm: float = doc(1.0, "gradient clipping norm")
    center_rewards_coefficient: float | None = doc(None, "TRL's reward-centring penalty (e.g. 0.01); None = off")
    bf16: bool = doc(True, "bf16 autocast (fp32 master weights)")
    freeze_embeddings: bool = doc(True, "freeze the token embedding matrix (262k x 640 in Gemma 3 270M)")
    freeze_layers: int = doc(0, "freeze the first N transformer layers (cheaper backward on CPU)")
    lora: Lora = doc(Lora(), "LoRA adapters (lora.r = 0: full fine-tuning); merged before averaging")
    member_cpus: float | None = doc(None, "CPUs per member task (default: the cluster's CPUs / M)")
    member_gpus: float | None = doc(None, "GPUs per member task (default: 1 when the cluster has GPUs, else 0)")
    save_steps: int = doc(50, "member checkpoint every N steps (atomic; --resume continues from it)")
    logging_steps: int = doc(1, "log member metrics every N steps")
    ray_address: str | None = doc(None, "Ray cluster address (default: RAY_ADDRESS, else embedded local Ray)")
    resume: bool = doc(False, "continue an unfinished run: finished members are kept, the others resume")
    overwrite: bool = doc(False, "replace a finished run in output_dir")


def _validate(config: Config) -> None:
    if config.num_members < 1:
        raise UserError(f"num_members must be >= 1, got {config.num_members}")
    if not config.learning_rates or any(lr <= 0 for lr in config.learning_rates):
        raise UserError(
            f"learning_rates must be a non-empty list of positive numbers, got {config.learning_rates}"
        )
    if not config.dropouts or any(not 0.0 <= p < 1.0 for p in config.dropouts):
        raise UserError(f"dropouts must be a non-empty list of values in [0, 1), got {config.dropouts}")
    for p in [config.label_noise, *config.compare_label_noise]:
        if not 0.0 <= p <= 1.0:
            raise UserError(f"label noise fractions must be in [0, 1], got {p}")


def _variant_dir(out: Path, noise: float, main_noise: float) -> Path:
    return out if noise == main_noise else out / "variants" / f"noise-{noise:g}"


def member_jobs(
    config: Config,
    out: Path,
    init: Path,
    init_sha: str,
    train: list[dict],
    evals: list[dict],
    threads: int,
    hooks: Hooks,
) -> tuple[list[dict], dict, list[float]]:
    """(the Ray task inputs of every member of every label-noise variant, the flipped pairs per noise, the
    noises). Member m of each variant: learning_rates[m % len], dropouts[m % len], seed + m."""
    noises = [config.label_noise] + [p for p in config.compare_label_noise if p != config.label_noise]
    jobs, flipped = [], {}
    for noise in noises:
        noisy, flipped[noise] = flip_labels(train, noise, config.seed)
        train_sha = hashlib.sha256(json.dumps(noisy).encode()).hexdigest()
        vdir = _variant_dir(out, noise, config.label_noise)
        for k in range(config.num_members):
            jobs.append(
                {
                    "member": k,
                    "label_noise": noise,
                    "out": str(vdir / "members" / str(k)),
                    "init": str(init),
                    "init_sha256": init_sha,
                    "train": noisy,
                    "eval": evals,
                    "train_sha256": train_sha,
                    "seed": config.seed + k,
                    "learning_rate": config.learning_rates[k % len(config.learning_rates)],
                    "dropout": config.dropouts[k % len(config.dropouts)],
                    "config": cfg.to_dict(config),
                    "threads": threads,
                    "progress": len(jobs) == 0,
                    "hooks": hooks,
                }
            )
    return jobs, flipped, noises


def variant_report(
    noise: float, vdir: Path, results: list[dict], jobs: list[dict], flipped: list, evaluate
) -> dict:
    """One label-noise variant: the members' held-out accuracy and loss, their WARM average's, their ensemble's.
    `results` and `jobs` are this variant's members; `evaluate(dir)` scores the held-out pairs with a model."""
    m = len(results)
    avg_c, avg_r = evaluate(vdir)
    ens_c = [sum(v) / m for v in zip(*[r["chosen"] for r in results])]
    ens_r = [sum(v) / m for v in zip(*[r["rejected"] for r in results])]
    members_acc = [accuracy(r["chosen"], r["rejected"]) for r in results]
    return {
        "label_noise": noise,
        "flipped_pairs": len(flipped),
        "dir": str(vdir),
        "members": [
            {
                "member": r["member"],
                "accuracy": a,
                "resumed": r["skipped"],
                "learning_rate": j["learning_rate"],
                "dropout": j["dropout"],
                "seed": j["seed"],
            }
            for r, a, j in zip(results, members_acc, jobs)
        ],
        "members_mean_accuracy": sum(members_acc) / m,
        "average_accuracy": accuracy(avg_c, avg_r),
        "ensemble_accuracy": accuracy(ens_c, ens_r),
        "members_mean_loss": sum(bt_loss(r["chosen"], r["rejected"]) for r in results) / m,
        "average_loss": bt_loss(avg_c, avg_r),
        "ensemble_loss": bt_loss(ens_c, ens_r),
    }


def _split(config: Config) -> tuple[list[dict], list[dict]]:
    """(train pairs, held-out pairs)."""
    rows = read_pairs(config.data)
    if config.eval_data:
        eval_rows, train_rows = read_pairs(config.eval_data), rows
    else:
        if len(rows) <= config.eval_size:
            raise UserError(f"{config.data}: {len(rows)} pairs, need more than eval_size={config.eval_size}")
        eval_rows, train_rows = rows[: config.eval_size], rows[config.eval_size :]
    return train_rows[: config.max_examples], eval_rows


def run(config: Config, hooks: Hooks = NO_HOOKS) -> Path:
    from transformers import AutoTokenizer

    from posttrain import cluster

    _validate(config)
    out = artifacts.prepare_output(config.output_dir, overwrite=config.overwrite, resume=config.resume)
    train_rows, eval_rows = _split(config)
    init = build_init(config.init, out / "init", config.seed)
    init_sha = artifacts.dir_sha256(init)
    tokenizer = AutoTokenizer.from_pretrained(init)
    train, evals = (encode_pairs(tokenizer, rows, config.max_length) for rows in (train_rows, eval_rows))

    resources = cluster.init(config.ray_address).cluster_resources()
    m = config.num_members
    cpus = config.member_cpus or max(resources.get("CPU", 1) / m, 0.01)
    gpus = config.member_gpus if config.member_gpus is not None else (1 if resources.get("GPU", 0) >= 1 else 0)
    jobs, flipped, noises = member_jobs(config, out, init, init_sha, train, evals, max(1, int(cpus)), hooks)
    print(
        f"[posttrain rm] {len(jobs)} members ({m} per variant, label noise {noises}) as Ray tasks with "
        f"{cpus:g} CPU / {gpus:g} GPU each; {len(train)} training pairs, {len(evals)} held out",
        flush=True,
    )
    names = [f"{Path(j['out']).relative_to(out)}" for j in jobs]
    results = cluster.run_tasks(
        train_member, jobs, num_cpus=cpus, num_gpus=gpus, names=names, progress="rm members"
    )

    def evaluate(model_dir: Path) -> tuple[list[float], list[float]]:
        return held_out_scores(model_dir, evals, config, threads=max(1, int(resources.get("CPU", 1))))

    init_scores = evaluate(init)
    report = {"init_accuracy": accuracy(*init_scores), "init_loss": bt_loss(*init_scores), "variants": []}
    for noise in noises:
        vdir = _variant_dir(out, noise, config.label_noise)
        average_members([vdir / "members" / str(k) for k in range(m)], vdir)
        mine = [(r, j) for r, j in zip(results, jobs) if j["label_noise"] == noise]
        report["variants"].append(
            variant_report(noise, vdir, [r for r, _ in mine], [j for _, j in mine], flipped[noise], evaluate)
        )
        if vdir != out:
            artifacts.mark_done(vdir)
    _add_noise_drops(report["variants"])
    report.update({"num_members": m, "train_pairs": len(train), "eval_pairs": len(evals)})
    artifacts.atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    _log_metrics(out, report)
    artifacts.write_manifest(
        out,
        stage="rm",
        config=cfg.to_dict(config),
        extra={"summary": report, "ray": cluster.describe()},
        inputs={
            "data": config.data,
            "data_sha256": artifacts.file_sha256(config.data) if Path(config.data).is_file() else None,
            "eval_data": config.eval_data,
            "init": config.init,
            "init_sha256": init_sha,
        },
    )
    artifacts.mark_done(out)
    print_report(report)
    return out


def held_out_scores(model_dir: Path, evals: list[dict], config: Config, threads: int):
    """(chosen scores, rejected scores) of the held-out pairs under the RM in `model_dir`."""
    from rewards.reward_model import RewardModelScorer

    scorer = RewardModelScorer(str(model_dir), batch_size=config.batch_size * 2, max_length=config.max_length,
                               threads=threads)  # fmt: skip
    return scorer.score_ids([p["chosen_ids"] for p in evals]), scorer.score_ids([p["rejected_ids"] for p in evals])


def _add_noise_drops(variants: list[dict]) -> None:
    """Each variant's accuracy drop against the least noisy one (None with a single variant)."""
    clean = min(variants, key=lambda v: v["label_noise"])
    for v in variants:
        v["drop_vs_least_noisy"] = {
            "members_mean": clean["members_mean_accuracy"] - v["members_mean_accuracy"],
            "average": clean["average_accuracy"] - v["average_accuracy"],
            "ensemble": clean["ensemble_accuracy"] - v["ensemble_accuracy"],
        } if len(variants) > 1 else None  # fmt: skip


def _log_metrics(out: Path, report: dict) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out / "tensorboard"))
    with open(out / "metrics.jsonl", "a") as f:
        for v in report["variants"]:
            tag = f"noise_{v['label_noise']:g}"
            record = {
                "label_noise": v["label_noise"],
                "members_mean_accuracy": v["members_mean_accuracy"],
                "average_accuracy": v["average_accuracy"],
                "ensemble_accuracy": v["ensemble_accuracy"],
                **{f"member_{x['member']}_accuracy": x["accuracy"] for x in v["members"]},
            }
            f.write(json.dumps(record) + "\n")
            for key, value in record.items():
                if key != "label_noise":
                    writer.add_scalar(f"{tag}/{key}", value, 0)
    writer.close()


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"posttrain rm: held-out pairwise accuracy ({report['eval_pairs']} pairs, "
        f"M = {report['num_members']})"
    )
    for col in ("label noise", "model", "lr", "dropout", "accuracy"):
        table.add_column(col)
    table.add_row("", "init (before training)", "", "", f"{report['init_accuracy']:.3f}", end_section=True)
    for v in report["variants"]:
        for x in v["members"]:
            table.add_row(
                f"{v['label_noise']:g}",
                f"member {x['member']}" + (" (resumed)" if x["resumed"] else ""),
                f"{x['learning_rate']:g}",
                f"{x['dropout']:g}",
                f"{x['accuracy']:.3f}",
            )
        table.add_row("", "members (mean)", "", "", f"{v['members_mean_accuracy']:.3f}")
        table.add_row("", "[bold]WARM average[/bold]", "", "", f"[bold]{v['average_accuracy']:.3f}[/bold]")
        table.add_row("", "ensemble (mean score)", "", "", f"{v['ensemble_accuracy']:.3f}", end_section=True)
    console = Console()
    console.print(table)
    for v in report["variants"]:
        d = v["drop_vs_least_noisy"]
        if d and v["label_noise"] > 0 and any(d.values()):
            verdict = "less" if d["average"] < d["members_mean"] else "not less"
            console.print(
                f"label noise {v['label_noise']:g}: accuracy drop vs the clean run: members "
                f"{d['members_mean']:+.3f}, average {d['average']:+.3f}, ensemble {d['ensemble']:+.3f} "
                f"-> the average degrades {verdict} than its members"
            )
    if not all(math.isfinite(v["average_accuracy"]) for v in report["variants"]):
        raise UserError("evaluation produced non-finite accuracies")
