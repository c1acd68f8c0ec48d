"""`posttrain sft`: Gemma 3 sampled-logit distillation, top to bottom.

The algorithm (Gemma 3 report §2.2; ../shared/ALGORITHMS.md):
  1. per target token t, draw K token ids S_t from the teacher distribution p_T (at a temperature);
  2. the teacher target keeps only those ids:
       unbiased (default): K draws with replacement, each weighted 1/K (duplicates stay as separate
                           slots, so the weight of an id is its count/K): E[target] = p_T exactly, so the
                           loss is an unbiased estimate of full-vocabulary cross-entropy to the teacher;
       renormalized:       K distinct ids drawn without replacement (Gumbel top-K), weighted
                           p_T(v) / sum_{u in S_t} p_T(u): the report's "zero the rest, renormalise" (biased);
  3. the student is trained with cross-entropy on that sparse target, L_t = -sum_{v in S_t} q(v) log p_S(v),
     where log p_S is the student's full-vocabulary log-softmax.
The student's log-softmax is computed over chunks of target positions with activation checkpointing, so
the B x T x V logits are never materialised (only one chunk x V block at a time, in fwd and in bwd).

The stage: teacher targets come from Ray workers (posttrain/teacher.py, cached); training reuses HF's
Trainer (gradient accumulation, DeepSpeed/accelerate pass-through, checkpoints, exact resume) with this
loss; checkpoints are published atomically; the output is an HF dir with posttrain.json and DONE last.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from posttrain import artifacts, config as cfg
from posttrain.config import doc
from posttrain.errors import UserError

# ----------------------------------------------------------------------------------------------------
# 1-2. Sparse teacher targets


def sample_targets(teacher_logits: torch.Tensor, k: int, *, temperature: float = 1.0,
                   estimator: str = "unbiased", generator: torch.Generator | None = None):
    """(N, V) teacher logits -> (ids int32 (N, k), weights fp16 (N, k)); padding slots have weight 0."""
    logp = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    n, vocab = logp.shape
    if estimator == "unbiased":
        ids = torch.multinomial(logp.exp(), k, replacement=True, generator=generator)
        ids, _ = ids.sort(dim=-1)
        weights = torch.full((n, k), 1.0 / k)
    elif estimator == "renormalized":
        kk = min(k, vocab)
        uniform = torch.rand(logp.shape, generator=generator).clamp_(1e-20, 1.0)
        ids = torch.topk(logp - torch.log(-torch.log(uniform)), kk, dim=-1).indices  # Gumbel top-k
        ids, _ = ids.sort(dim=-1)
        p = logp.gather(-1, ids).exp()
        weights = p / p.sum(-1, keepdim=True)
        if kk < k:
            ids = F.pad(ids, (0, k - kk))
            weights = F.pad(weights, (0, k - kk))
    else:
        raise UserError(f"unknown estimator '{estimator}' (expected 'unbiased' or 'renormalized')")
    return ids.to(torch.int32), weights.to(torch.float16)


# ----------------------------------------------------------------------------------------------------
# 3. The loss


def _chunk_ce(hidden: torch.Tensor, lm_head: torch.nn.Module, ids: torch.Tensor, weights: torch.Tensor,
              softcap: float | None) -> torch.Tensor:
    logits = lm_head(hidden)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    logits = logits.float()
    logp = logits.gather(-1, ids.long()) - torch.logsumexp(logits, dim=-1, keepdim=True)
    return -(weights.float() * logp).sum()


def sparse_kd_loss(hidden: torch.Tensor, lm_head: torch.nn.Module, target_ids: torch.Tensor,
                   target_weights: torch.Tensor, *, chunk_size: int = 256, softcap: float | None = None):
    """Sum over target positions of -sum_k w_k log p_S(id_k). `hidden` holds only the target positions
    (N, D); each chunk's logits are recomputed in backward instead of stored."""
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        args = (hidden[sl], lm_head, target_ids[sl], target_weights[sl], softcap)
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_ce, *args, use_reentrant=False)
        else:
            total = total + _chunk_ce(*args)
    return total


def full_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0):
    """Exact full-vocabulary cross-entropy to the teacher, summed over positions (the reference)."""
    p_t = F.softmax(teacher_logits.float() / temperature, dim=-1)
    return -(p_t * F.log_softmax(student_logits.float(), dim=-1)).sum()


def target_positions(loss_mask: list[bool]) -> list[int]:
    """Positions p whose next token p+1 is a model-turn token: where the student predicts a target."""
    return [p for p in range(len(loss_mask) - 1) if loss_mask[p + 1]]


# ----------------------------------------------------------------------------------------------------
# The stage


@dataclasses.dataclass
class Config:
    data: str = doc("data/demo/sft.jsonl", "chat dataset (.jsonl, .parquet or datasets dir) with 'messages'")
    output_dir: str = doc("runs/sft", "where the student HF dir, metrics and checkpoints go")
    teacher: str = doc("gemma3-270m", "teacher model: HF dir, .gguf file, 'gemma3-270m' (embedded) or 'tiny:...'")
    student: str = doc("gemma3-270m", "student init: same kinds of spec as teacher")
    student_layers: list[int] | None = doc(None, "keep only these layers of the student spec (None = all)")
    max_length: int = doc(512, "tokens per example (longer examples are truncated)")
    max_examples: int | None = doc(None, "use only the first N rows of the data (None = all)")
    eval_size: int = doc(16, "rows held out to report the KD loss before/after training")
    k: int = doc(256, "teacher token ids sampled per target token")
    estimator: str = doc("unbiased", "'unbiased' (with replacement, count/K) or 'renormalized' (distinct ids)")
    teacher_temperature: float = doc(1.0, "temperature of the teacher distribution targets are drawn from")
    teacher_dtype: str = doc("float32", "teacher forward dtype: float32 or bfloat16")
    teacher_workers: int = doc(2, "Ray actors computing teacher targets")
    target_shards: int = doc(4, "shards the teacher targets are split into")
    target_cache: str | None = doc(None, "target cache dir (default: $POSTTRAIN_CACHE/targets)")
    seed: int = doc(0, "seed for target sampling, init and data order")
    epochs: float = doc(1.0, "passes over the training data")
    max_steps: int = doc(-1, "optimizer steps (overrides epochs when > 0)")
    batch_size: int = doc(4, "examples per device per micro-batch")
    gradient_accumulation_steps: int = doc(1, "micro-batches per optimizer step")
    learning_rate: float = doc(5e-5, "peak learning rate")
    lr_scheduler: str = doc("linear", "HF scheduler name: linear, cosine, constant, ...")
    warmup_steps: int = doc(0, "linear warm-up steps")
    weight_decay: float = doc(0.0, "AdamW weight decay")
    max_grad_norm: float = doc(1.0, "gradient clipping norm")
    logit_chunk: int = doc(256, "target positions per student log-softmax chunk")
    bf16: bool = doc(True, "bf16 autocast for student forward/backward (fp32 master weights and softmax)")
    freeze_embeddings: bool = doc(False, "freeze the (tied) embedding / LM head matrix")
    lora_r: int = doc(0, "LoRA rank (0 = full fine-tuning)")
    lora_alpha: int = doc(16, "LoRA alpha")
    lora_dropout: float = doc(0.0, "LoRA dropout")
    lora_target_modules: list[str] = doc(["q_proj", "k_proj", "v_proj", "o_proj"], "LoRA target modules")
    save_steps: int = doc(50, "checkpoint every N optimizer steps (atomic)")
    save_total_limit: int = doc(2, "checkpoints kept")
    logging_steps: int = doc(1, "log metrics every N steps")
    deepspeed: str | None = doc(None, "DeepSpeed JSON config passed to the HF Trainer (e.g. ZeRO-3)")
    ray_address: str | None = doc(None, "Ray cluster address (default: RAY_ADDRESS, else embedded local Ray)")
    resume: bool = doc(False, "continue from the latest checkpoint in output_dir")
    overwrite: bool = doc(False, "replace a finished run in output_dir")


def _collate(batch: list[dict], pad_id: int) -> dict:
    width = max(len(ex["input_ids"]) for ex in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    flat_pos, ids, weights = [], [], []
    for b, ex in enumerate(batch):
        n = len(ex["input_ids"])
        input_ids[b, :n] = torch.tensor(ex["input_ids"])
        attention[b, :n] = 1
        flat_pos += [b * width + p for p in ex["positions"]]
        ids.append(ex["target_ids"])
        weights.append(ex["target_weights"])
    return {"input_ids": input_ids, "attention_mask": attention, "target_pos": torch.tensor(flat_pos),
            "target_ids": torch.cat(ids), "target_weights": torch.cat(weights)}


def kd_forward(model, batch: dict, chunk: int) -> tuple[torch.Tensor, int]:
    """(summed loss, target count) for a collated batch."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1])[batch["target_pos"]]
    softcap = getattr(base.config, "final_logit_softcapping", None)
    loss = sparse_kd_loss(hidden, base.lm_head, batch["target_ids"], batch["target_weights"],
                          chunk_size=chunk, softcap=softcap)
    return loss, int(batch["target_pos"].numel())


def _make_trainer(model, train_set, eval_set, config: Config, out: Path, pad_id: int, callbacks: list):
    from transformers import Trainer, TrainingArguments
    from trl.models.utils import _ForwardRedirection

    from posttrain.checkpoint import atomic_checkpoints

    class KDTrainer(atomic_checkpoints(Trainer)):
        """HF Trainer with the sparse KD loss (checkpoints published atomically)."""

        def _kd(self, model, inputs):
            # Run the loss inside the wrapper's forward (DeepSpeed engine, DDP) so its hooks fire: ZeRO-3
            # gathers the partitioned weights of every submodule we call, the chunked LM head included.
            inner = self.accelerator.unwrap_model(model)
            if inner is model:
                loss, n = kd_forward(model, inputs, config.logit_chunk)
            else:
                loss, n = _ForwardRedirection()(model, inner, lambda b: kd_forward(inner, b, config.logit_chunk),
                                                inputs)
            return loss / max(n, 1)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = self._kd(model, inputs)
            return (loss, None) if return_outputs else loss

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            with torch.no_grad(), self.autocast_smart_context_manager():
                loss = self._kd(model, self._prepare_inputs(inputs))
            return loss.detach(), None, None

    use_bf16 = config.bf16 and (not torch.cuda.is_available() or torch.cuda.is_bf16_supported())
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"), per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size, num_train_epochs=config.epochs,
        max_steps=config.max_steps, learning_rate=config.learning_rate, lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_steps, weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm,
        gradient_accumulation_steps=config.gradient_accumulation_steps, bf16=use_bf16,
        logging_steps=config.logging_steps, save_strategy="steps", save_steps=config.save_steps,
        save_total_limit=config.save_total_limit, seed=config.seed, data_seed=config.seed,
        remove_unused_columns=False, report_to="none", deepspeed=config.deepspeed,
        dataloader_num_workers=0, disable_tqdm=False, eval_strategy="no", use_cpu=not torch.cuda.is_available(),
    )
    return KDTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                     data_collator=lambda b: _collate(b, pad_id), callbacks=callbacks)


@torch.no_grad()
def _eval_loss(model, examples: list[dict], config: Config, pad_id: int) -> float:
    """Mean over batches of per-token KD loss, weighted by batch size, as Trainer.evaluate computes it."""
    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    use_bf16 = config.bf16 and (device.type == "cpu" or torch.cuda.is_bf16_supported())
    for start in range(0, len(examples), config.batch_size):
        chunk = examples[start:start + config.batch_size]
        batch = {k: v.to(device) for k, v in _collate(chunk, pad_id).items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss, n = kd_forward(model, batch, config.logit_chunk)
        total += (loss / max(n, 1)).item() * len(chunk)
        count += len(chunk)
    model.train()
    return total / count


def run(config: Config) -> Path:
    from posttrain import data, models, teacher
    from posttrain.checkpoint import latest_checkpoint, metrics_callbacks, ranks, shared_staging, truncate_metrics

    torch.manual_seed(config.seed)
    # Multi-process launch: the main rank prepares the output dir, the student and the teacher targets; the
    # other ranks wait, then find them in the cache.
    main, barrier = ranks()
    if not main:
        barrier()
    out = artifacts.prepare_output(config.output_dir, overwrite=config.overwrite, resume=config.resume) if main \
        else Path(config.output_dir)
    rows = data.read_rows(config.data)[: config.max_examples]
    teacher_dir = models.resolve(config.teacher)
    student_dir = models.resolve(config.student)
    if config.student_layers:
        student_dir = models.derive_student(student_dir, config.student_layers)
    tokenizer = models.load_tokenizer(str(student_dir))
    teacher_vocab = models.load_tokenizer(str(teacher_dir)).get_vocab()
    if teacher_vocab != tokenizer.get_vocab():
        raise UserError(f"teacher {config.teacher} and student {config.student} have different tokenizers; "
                        "sampled-logit KD needs a shared vocabulary")

    examples = data.tokenize_rows(tokenizer, rows, config.max_length)
    for ex in examples:
        ex["positions"] = target_positions(ex["loss_mask"])
    targets = teacher.build_targets(examples, teacher_spec=str(teacher_dir), config=config)
    for ex, (ids, weights) in zip(examples, teacher.load_targets(targets)):
        ex["target_ids"], ex["target_weights"] = ids, weights
    if len(examples) <= config.eval_size:
        raise UserError(f"{config.data}: {len(examples)} rows, need more than eval_size={config.eval_size}")
    eval_set, train_set = examples[: config.eval_size], examples[config.eval_size:]
    if main:
        barrier()

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    if config.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    model = models.apply_lora(model, r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout,
                              target_modules=config.lora_target_modules)
    trainer = _make_trainer(model, train_set, eval_set, config, out, tokenizer.pad_token_id,
                            metrics_callbacks(out, main))
    resume_from = latest_checkpoint(out) if config.resume else None
    if main:
        truncate_metrics(out / "metrics.jsonl", int(resume_from.rsplit("-", 1)[1]) if resume_from else 0)
    before = _eval_loss(model, eval_set, config, tokenizer.pad_token_id)  # before the Trainer wraps the model
    trainer.train(resume_from_checkpoint=resume_from)
    after = trainer.evaluate()["eval_loss"]

    # one dir for every rank: save_model gathers ZeRO-3 partitions on all of them
    with shared_staging(out / ".model.staging", main, trainer.accelerator.wait_for_everyone) as staging:
        if config.lora_r > 0:
            if main:
                trainer.model.merge_and_unload().save_pretrained(staging)
        else:
            trainer.save_model(str(staging))  # gathers ZeRO-3 partitions (stage3_gather_16bit_weights_on_model_save)
    if not main:
        return out  # the main rank publishes the model, writes the manifest and DONE
    tokenizer.save_pretrained(staging)
    for item in staging.iterdir():
        os.replace(item, out / item.name)
    staging.rmdir()
    from posttrain import cluster

    summary = {"eval_kd_loss_before": before, "eval_kd_loss_after": after,
               "train_examples": len(train_set), "steps": trainer.state.global_step}
    artifacts.write_manifest(out, stage="sft", config=cfg.to_dict(config), extra={"summary": summary, "ray": cluster.describe()},
                             inputs={"data": config.data, "data_sha256": artifacts.file_sha256(config.data)
                                     if Path(config.data).is_file() else None,
                                     "teacher": str(teacher_dir), "student_init": str(student_dir),
                                     "student_init_sha256": artifacts.dir_sha256(student_dir),
                                     "targets": str(targets), "targets_key": json.loads(
                                         (targets / "manifest.json").read_text())["inputs"]})
    artifacts.mark_done(out)
    _print_summary(summary)
    return out


def _print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="posttrain sft: student KD loss on held-out rows (nats/token)")
    table.add_column("before")
    table.add_column("after")
    table.add_column("steps")
    table.add_row(f"{summary['eval_kd_loss_before']:.4f}", f"{summary['eval_kd_loss_after']:.4f}",
                  str(summary["steps"]))
    Console().print(table)
    if not math.isfinite(summary["eval_kd_loss_after"]):
        raise UserError("training diverged: the final loss is not finite")
