"""`posttrain sft`: Gemma 3 sampled-logit distillation, the stage (the maths is in posttrain/kd.py).

Off-policy (the default, `on_policy.fraction=0`): teacher targets for the dataset's completions come from Ray
workers (posttrain/teacher.py, cached). On-policy (λ > 0, posttrain/on_policy.py): a share λ of each batch's
completions is sampled from the current student and scored by the teacher's Ray actors during training, with the
`forward` (Gemma 3 sparse targets) or `reverse` (per-token reverse KL) divergence. Either way the teacher may
see privileged context the student does not (`teacher_context`, posttrain/teacher_context.py), and
`label_weight` mixes the dataset's reference tokens into the off-policy rows. Training reuses HF's Trainer
(gradient accumulation, DeepSpeed/accelerate pass-through, checkpoints, exact resume) with kd's loss;
checkpoints are published atomically; the output is an HF dir with posttrain.json and DONE last.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import torch

from posttrain import artifacts, kd, on_policy, teacher_context
from posttrain import config as cfg
from posttrain.config import doc
from posttrain.errors import UserError
from posttrain.hooks import NO_HOOKS, Hooks
from posttrain.models import Lora


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
    lora: Lora = doc(Lora(), "LoRA adapters (lora.r = 0: full fine-tuning; adapters are merged into the output)")
    on_policy: on_policy.OnPolicy = doc(
        on_policy.OnPolicy(),
        "on-policy distillation: the share λ of each "
        "batch sampled from the student (fraction), and how it samples",
    )
    divergence: str = doc(
        "forward",
        "'forward' (Gemma 3's sampled-K cross-entropy to the teacher at every "
        "completion position) or 'reverse' (per-token reverse KL on the student's own samples: "
        "needs on_policy.fraction=1)",
    )
    teacher_context: teacher_context.TeacherContext = doc(
        teacher_context.TeacherContext(), "privileged context on the teacher's side only: template, exemplars"
    )
    label_weight: float = doc(
        0.0,
        "α: α·CE on the reference tokens + (1−α)·KD, on off-policy rows (Hinton's "
        "hard-label mix; 0 = Gemma 3's recipe)",
    )
    save_steps: int = doc(50, "checkpoint every N optimizer steps (atomic)")
    save_total_limit: int = doc(2, "checkpoints kept")
    logging_steps: int = doc(1, "log metrics every N steps")
    deepspeed: str | None = doc(None, "DeepSpeed JSON config passed to the HF Trainer (e.g. ZeRO-3)")
    ray_address: str | None = doc(None, "Ray cluster address (default: RAY_ADDRESS, else embedded local Ray)")
    resume: bool = doc(False, "continue from the latest checkpoint in output_dir")
    overwrite: bool = doc(False, "replace a finished run in output_dir")


def check(config: Config) -> None:
    """The fields, and what the teacher context needs of the data, before anything is written."""
    from posttrain import data

    on_policy.check(config.on_policy, config.divergence, config.label_weight)
    if teacher_context.active(config.teacher_context):
        rows = data.read_rows(config.data)[: config.max_examples]
        teacher_context.check(config.teacher_context, rows, config.data)


def _collate(batch: list[dict], pad_id: int, label_weight: float = 0.0, divergence: str = "forward") -> dict:
    """Right-padded ids and the flat target positions with their targets: (ids, weights) for `forward` (the
    reference token mixed in with `label_weight`), the sampled token and the teacher's log-prob for `reverse`."""
    width = max(len(ex["input_ids"]) for ex in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    flat_pos, ids, weights = [], [], []
    for b, ex in enumerate(batch):
        n = len(ex["input_ids"])
        input_ids[b, :n] = torch.tensor(ex["input_ids"])
        attention[b, :n] = 1
        flat_pos += [b * width + p for p in ex["positions"]]
        ex_ids, ex_weights = ex["target_ids"], ex["target_weights"]
        if label_weight > 0:
            labels = torch.tensor([ex["input_ids"][p + 1] for p in ex["positions"]])
            alpha = 0.0 if ex.get("on_policy") else label_weight  # on-policy rows have no reference
            ex_ids, ex_weights = kd.with_labels(ex_ids, ex_weights, labels, alpha)
        ids.append(ex_ids)
        weights.append(ex_weights)
    if divergence == "reverse":
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "target_pos": torch.tensor(flat_pos),
            "token_ids": torch.cat(ids)[:, 0],
            "teacher_logp": torch.cat(weights)[:, 0],
        }
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "target_pos": torch.tensor(flat_pos),
        "target_ids": torch.cat(ids),
        "target_weights": torch.cat(weights),
    }


def _training_args(config: Config, out: Path):
    from transformers import TrainingArguments

    from posttrain import models

    return TrainingArguments(
        output_dir=str(out / "checkpoints"), per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size, num_train_epochs=config.epochs, max_steps=config.max_steps,
        learning_rate=config.learning_rate, lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm,
        gradient_accumulation_steps=config.gradient_accumulation_steps, bf16=models.use_bf16(config.bf16),
        logging_steps=config.logging_steps, save_strategy="steps", save_steps=config.save_steps,
        save_total_limit=config.save_total_limit, seed=config.seed, data_seed=config.seed,
        remove_unused_columns=False, report_to="none", deepspeed=config.deepspeed, dataloader_num_workers=0,
        disable_tqdm=False, eval_strategy="no", use_cpu=not torch.cuda.is_available(),
    )  # fmt: skip


def _batch_key(step: int, examples: list[dict]) -> tuple:
    """A micro-batch's identity for rows sampled ahead: the step it trains at and its example indices."""
    return step, tuple(ex["index"] for ex in examples)


def _make_trainer(model, train_set, eval_set, config: Config, out: Path, tokenizer, callbacks: list, online=None):
    """The HF Trainer with kd's loss. With `online` (teacher.OnlineTeacher, on-policy), batches stay lists of
    examples until the loss, where on_policy.start_rows/finish_rows re-make their on-policy share."""
    from transformers import Trainer
    from trl.models.utils import _ForwardRedirection

    from posttrain.checkpoint import atomic_checkpoints

    pad_id = tokenizer.pad_token_id

    class KDTrainer(atomic_checkpoints(Trainer)):
        """HF Trainer with the sparse KD loss (checkpoints published atomically)."""

        sampler = None  # on-policy: the student's sampling copy, made at the first on-policy batch
        # on_policy.overlap: the next update's micro-batches (looked ahead in get_batch_samples) and their
        # started on-policy rows by (step, example indices); `resumed`: those read back from a checkpoint
        upcoming: list = []
        pending: dict = {}
        resumed: dict = {}

        def _kd(self, model, inputs):
            # Run the loss inside the wrapper's forward (DeepSpeed engine, DDP) so its hooks fire: ZeRO-3
            # gathers the partitioned weights of every submodule we call, the chunked LM head included.
            inner = self.accelerator.unwrap_model(model)
            if inner is model:
                loss, n = kd.kd_forward(model, inputs, config.logit_chunk)
            else:
                loss, n = _ForwardRedirection()(
                    model, inner, lambda b: kd.kd_forward(inner, b, config.logit_chunk), inputs
                )
            return loss / max(n, 1)

        def get_batch_samples(self, epoch_iterator, num_batches, device):
            if online is None or not config.on_policy.overlap:
                return super().get_batch_samples(epoch_iterator, num_batches, device)
            if getattr(self, "_ahead_of", None) is not epoch_iterator:  # a new epoch: nothing looked ahead
                self._ahead_of, self.upcoming = epoch_iterator, []
            wanted = num_batches + self.args.gradient_accumulation_steps
            while len(self.upcoming) < wanted:
                try:
                    self.upcoming.append(next(epoch_iterator))
                except StopIteration:
                    break
            batches, self.upcoming = self.upcoming[:num_batches], self.upcoming[num_batches:]
            return batches, None

        def _started(self, examples: list[dict], step: int):
            """This batch's on-policy rows: started during the last update (overlap), read back from the
            checkpoint, or sampled now."""
            key = _batch_key(step, examples)
            if key in self.pending:
                return self.pending.pop(key)
            if key in self.resumed:
                started = on_policy.Started([], [], [])
                completions = self.resumed.pop(key)
                if completions:
                    on_policy.resubmit(started, online, examples[: len(completions)], completions, step)
                return started
            return on_policy.start_rows(self.sampler, tokenizer, examples, config.on_policy, online, step,
                                        config.seed)  # fmt: skip

        def _on_policy(self, model, examples: list[dict], training: bool) -> dict:
            """A batch of examples collated, its on-policy share re-made first when training."""
            divergence = "forward"
            if training:
                if self.sampler is None:
                    from posttrain.models import use_bf16

                    student = self.accelerator.unwrap_model(model)
                    self.sampler = on_policy.StudentSampler(student, use_bf16(config.bf16))
                step = self.state.global_step
                started = self._started(examples, step)
                if config.on_policy.overlap and getattr(self, "_looked_ahead", None) != step:
                    # the next update's rows, sampled with these weights (one step behind when trained) and
                    # scored by the teacher's actors while this update runs
                    self._looked_ahead = step
                    ahead = self.upcoming[: self.args.gradient_accumulation_steps]
                    for nxt in ahead if step + 1 < self.state.max_steps else []:
                        rows = nxt["examples"]
                        self.pending[_batch_key(step + 1, rows)] = on_policy.start_rows(
                            self.sampler, tokenizer, rows, config.on_policy, online, step + 1, config.seed
                        )
                examples = on_policy.finish_rows(started, examples, online)
                divergence = config.divergence
            device = next(model.parameters()).device
            batch = _collate(examples, pad_id, config.label_weight, divergence)
            return {k: v.to(device) for k, v in batch.items()}

        def _save_rng_state(self, output_dir):
            super()._save_rng_state(output_dir)
            # overlap: rows sampled for the next update, which the checkpoint's weights cannot redraw
            if self.pending:
                rows = [{"step": s, "indices": list(idx), "completions": st.completions}
                        for (s, idx), st in self.pending.items()]  # fmt: skip
                path = Path(output_dir) / f"on_policy_pending_{self.args.process_index}.json"
                path.write_text(json.dumps(rows))

        def _load_rng_state(self, checkpoint):
            super()._load_rng_state(checkpoint)
            path = Path(checkpoint or "") / f"on_policy_pending_{self.args.process_index}.json"
            if checkpoint and path.exists():
                self.resumed = {(r["step"], tuple(r["indices"])): r["completions"]
                                for r in json.loads(path.read_text())}  # fmt: skip

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if "examples" in inputs:
                inputs = self._on_policy(model, inputs["examples"], training=True)
            loss = self._kd(model, inputs)
            return (loss, None) if return_outputs else loss

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            with torch.no_grad(), self.autocast_smart_context_manager():
                if "examples" in inputs:  # held-out rows: the dataset's completions and their cached targets
                    inputs = self._on_policy(model, inputs["examples"], training=False)
                loss = self._kd(model, self._prepare_inputs(inputs))
            return loss.detach(), None, None

    def collate(batch):
        return {"examples": batch} if online is not None else _collate(batch, pad_id, config.label_weight)

    return KDTrainer(model=model, args=_training_args(config, out), train_dataset=train_set,
                     eval_dataset=eval_set, data_collator=collate, callbacks=callbacks)  # fmt: skip


@torch.no_grad()
def _eval_loss(model, examples: list[dict], config: Config, pad_id: int) -> float:
    """Mean over batches of per-token KD loss, weighted by batch size, as Trainer.evaluate computes it."""
    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    from posttrain import models

    use_bf16 = models.use_bf16(config.bf16, device)
    for start in range(0, len(examples), config.batch_size):
        chunk = examples[start : start + config.batch_size]
        batch = {k: v.to(device) for k, v in _collate(chunk, pad_id, config.label_weight).items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss, n = kd.kd_forward(model, batch, config.logit_chunk)
        total += (loss / max(n, 1)).item() * len(chunk)
        count += len(chunk)
    model.train()
    return total / count


def prepare(config: Config) -> dict:
    """The student's init dir, tokenizer and tokenised examples with their teacher targets (computed by the main
    rank, read from the cache by the others), split into eval and train sets."""
    from posttrain import data, models, teacher

    rows = data.read_rows(config.data)[: config.max_examples]
    teacher_dir = models.resolve(config.teacher)
    student_dir = models.resolve(config.student)
    if config.student_layers:
        student_dir = models.derive_student(student_dir, config.student_layers)
    tokenizer = models.load_tokenizer(str(student_dir))
    teacher_vocab = models.load_tokenizer(str(teacher_dir)).get_vocab()
    if teacher_vocab != tokenizer.get_vocab():
        raise UserError(
            f"teacher {config.teacher} and student {config.student} have different tokenizers; "
            "sampled-logit KD needs a shared vocabulary"
        )
    examples = data.tokenize_rows(tokenizer, rows, config.max_length)
    if len(examples) <= config.eval_size:
        raise UserError(f"{config.data}: {len(examples)} rows, need more than eval_size={config.eval_size}")
    for i, ex in enumerate(examples):
        ex["positions"] = kd.target_positions(ex["loss_mask"])
        ex["index"] = i
    add_teacher_inputs(config, rows, examples, tokenizer)
    # all on-policy: only the held-out rows are scored off-policy (the before/after KD loss)
    scored = examples[: config.eval_size] if config.on_policy.fraction == 1.0 else examples
    targets = teacher.build_targets(scored, teacher_spec=str(teacher_dir), config=config)
    for ex, (ids, weights) in zip(scored, teacher.load_targets(targets)):
        ex["target_ids"], ex["target_weights"] = ids, weights
    return {
        "teacher_dir": teacher_dir,
        "student_dir": student_dir,
        "tokenizer": tokenizer,
        "targets": targets,
        "eval_set": examples[: config.eval_size],
        "train_set": examples[config.eval_size :],
    }


def add_teacher_inputs(config: Config, rows: list[dict], examples: list[dict], tokenizer) -> None:
    """The teacher's own ids and positions when it sees privileged context, and for on-policy rows the student's
    and the teacher's prompt ids (the row without its last assistant turn), which sampled completions extend."""
    from posttrain import data

    section = config.teacher_context
    on = config.on_policy.fraction > 0
    if not (teacher_context.active(section) or on):
        return
    others = teacher_context.exemplar_rows(
        len(rows), section.exemplars, config.seed, teacher_context.groups(rows, section)
    )

    def teacher_side(i: int, student_ids: list[int]) -> tuple[list[int], int]:
        if not teacher_context.active(section):
            return student_ids, 0
        return teacher_context.teacher_ids(tokenizer, student_ids, rows[i], section, [rows[j] for j in others[i]])

    for i, ex in enumerate(examples):
        if teacher_context.active(section):
            ex["teacher_input_ids"], offset = teacher_side(i, ex["input_ids"])
            ex["teacher_positions"] = [p + offset for p in ex["positions"]]
        if on:
            ex["prompt_ids"] = data.prompt_ids(tokenizer, data.prompt_messages(rows[i]))
            ex["teacher_prompt_ids"], _ = teacher_side(i, ex["prompt_ids"])


def save_student(trainer, tokenizer, out: Path, main: bool, merge_lora: bool) -> None:
    """The trained student as an HF dir at the top of `out`: every rank writes into one staging dir (save_model
    gathers ZeRO-3 partitions on all of them), the main rank moves it into place."""
    from posttrain.checkpoint import shared_staging

    with shared_staging(out / ".model.staging", main, trainer.accelerator.wait_for_everyone) as staging:
        if merge_lora:
            if main:
                trainer.model.merge_and_unload().save_pretrained(staging)
        else:
            trainer.save_model(
                str(staging)
            )  # gathers ZeRO-3 partitions (stage3_gather_16bit_weights_on_model_save)
    if not main:
        return
    tokenizer.save_pretrained(staging)
    for item in staging.iterdir():
        os.replace(item, out / item.name)
    staging.rmdir()


def run(config: Config, hooks: Hooks = NO_HOOKS) -> Path:
    from transformers import AutoModelForCausalLM

    from posttrain import cluster, models
    from posttrain import hooks as hooks_
    from posttrain.checkpoint import latest_checkpoint, metrics_callbacks, ranks, truncate_metrics

    check(config)
    torch.manual_seed(config.seed)
    # Multi-process launch: the main rank prepares the output dir, the student and the teacher targets; the
    # other ranks wait, then find them in the cache.
    main, barrier = ranks()
    if not main:
        barrier()
    out = (
        artifacts.prepare_output(config.output_dir, overwrite=config.overwrite, resume=config.resume)
        if main
        else Path(config.output_dir)
    )
    prep = prepare(config)
    if main:
        barrier()

    model = AutoModelForCausalLM.from_pretrained(prep["student_dir"], dtype=torch.float32)
    if config.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    model = models.apply_lora(model, config.lora)
    pad_id = prep["tokenizer"].pad_token_id
    online = _online_teacher(config, prep["teacher_dir"])
    callbacks = metrics_callbacks(out, main) + [hooks_.trainer_callback(hooks)]
    trainer = _make_trainer(
        model, prep["train_set"], prep["eval_set"], config, out, prep["tokenizer"], callbacks, online
    )
    resume_from = latest_checkpoint(out) if config.resume else None
    if main:
        truncate_metrics(out / "metrics.jsonl", int(resume_from.rsplit("-", 1)[1]) if resume_from else 0)
    before = _eval_loss(model, prep["eval_set"], config, pad_id)  # before the Trainer wraps the model
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    finally:
        if online is not None:
            online.close()
    after = trainer.evaluate()["eval_loss"]
    save_student(trainer, prep["tokenizer"], out, main, config.lora.r > 0)
    if not main:
        return out  # the main rank publishes the model, writes the manifest and DONE

    summary = {
        "eval_kd_loss_before": before,
        "eval_kd_loss_after": after,
        "train_examples": len(prep["train_set"]),
        "steps": trainer.state.global_step,
    }
    if online is not None:  # what the teacher sent for the sampled tokens (ids + weights or log-probs)
        summary["on_policy_tokens"] = online.tokens
        summary["teacher_bytes_per_token"] = online.bytes_received / max(1, online.tokens)
    artifacts.write_manifest(out, stage="sft", config=cfg.to_dict(config), inputs=_manifest_inputs(config, prep),
                             extra={"summary": summary, "ray": cluster.describe()})  # fmt: skip
    artifacts.mark_done(out)
    _print_summary(summary)
    return out


def _online_teacher(config: Config, teacher_dir: Path):
    """The teacher's Ray actors for on-policy rows (None off-policy)."""
    if config.on_policy.fraction == 0:
        return None
    from posttrain.teacher import OnlineTeacher

    return OnlineTeacher(teacher_dir, config, "logprobs" if config.divergence == "reverse" else "targets")


def _manifest_inputs(config: Config, prep: dict) -> dict:
    targets = prep["targets"]
    return {
        "data": config.data,
        "data_sha256": artifacts.file_sha256(config.data) if Path(config.data).is_file() else None,
        "teacher": str(prep["teacher_dir"]),
        "student_init": str(prep["student_dir"]),
        "student_init_sha256": artifacts.dir_sha256(prep["student_dir"]),
        "targets": str(targets),
        "targets_key": json.loads((targets / "manifest.json").read_text())["inputs"],
    }


def _print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="posttrain sft: student KD loss on held-out rows (nats/token)")
    table.add_column("before")
    table.add_column("after")
    table.add_column("steps")
    table.add_row(
        f"{summary['eval_kd_loss_before']:.4f}", f"{summary['eval_kd_loss_after']:.4f}", str(summary["steps"])
    )
    Console().print(table)
    if not math.isfinite(summary["eval_kd_loss_after"]):
        raise UserError("training diverged: the final loss is not finite")
