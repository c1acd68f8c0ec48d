"""Sampled-256 KD (posttrain) against full-vocabulary KD (TRL), on Gemma 3 shapes with the real 262,144 vocab.

    python benchmarks/distill.py [--steps 4] [--batch 4] [--seq 128]

Same synthetic batches (random token ids; the last half of each sequence is the trained reply), same student
(Gemma 3 270M config cut to 6 layers: 5 local + 1 global), same teacher (the full 18-layer 270M config),
same optimiser, bf16 autocast, measured in one run, each variant in its own fresh process so peak RSS is
its own:
  posttrain      sparse targets (K=256, ids int32 + weights fp16) precomputed once by the teacher, loss over
                 the student's chunked full-vocab log-softmax (posttrain.kd.sparse_kd_loss)
  trl-chunked    TRL DistillationTrainer's loss (trl.trainer.distillation_trainer._chunked_divergence_loss,
                 beta=0 i.e. forward KL = KD) with the teacher run online every step, as that trainer does
  trl-full       TRL GKD's generalized_jsd_loss (beta=0) on full B x T x V logits, teacher online
Random init weights: speed and memory do not depend on the values. Teacher-target bytes/token is measured on a
shard written with the same safetensors format posttrain's teacher writes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

VOCAB = 262_144
CHUNK = int(os.environ.get("KD_CHUNK", 256))  # posttrain sft's logit_chunk default


def _configs():
    from transformers import Gemma3TextConfig

    base = dict(
        vocab_size=VOCAB,
        hidden_size=640,
        intermediate_size=2048,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        sliding_window=512,
        max_position_embeddings=32768,
        query_pre_attn_scalar=256,
    )
    teacher = Gemma3TextConfig(num_hidden_layers=18, **base)
    student = Gemma3TextConfig(num_hidden_layers=6, **base)
    return teacher, student


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_variant(variant: str, steps: int, batch: int, seq: int, targets_path: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from posttrain.kd import sample_targets, sparse_kd_loss

    torch.manual_seed(0)
    teacher_cfg, student_cfg = _configs()
    student = AutoModelForCausalLM.from_config(student_cfg, dtype=torch.float32)
    student.train()
    # fused AdamW: what the HF Trainer (and so `posttrain sft`) uses by default (adamw_torch_fused)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-5, fused=True)
    reply = seq // 2
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(10, VOCAB, (batch, seq), generator=g) for _ in range(steps + 1)]
    positions = torch.arange(seq - reply - 1, seq - 1)  # predictions of the reply tokens
    torch.manual_seed(1)
    # posttrain's training process never holds the teacher: it reads the cached targets
    teacher = None if variant == "posttrain" else AutoModelForCausalLM.from_config(teacher_cfg).eval()
    result = {"variant": variant}

    if variant == "targets":
        # the one-time target build (what posttrain's Ray actors do), in its own process, written to disk
        t0 = time.perf_counter()
        tensors = {}
        with torch.no_grad():
            for i, ids in enumerate(batches):
                hidden = teacher.model(ids).last_hidden_state[:, positions]
                logits = teacher.lm_head(hidden.reshape(-1, hidden.shape[-1]))
                t_ids, t_w = sample_targets(logits, 256, generator=torch.Generator().manual_seed(i))
                tensors[f"ids{i}"], tensors[f"weights{i}"] = t_ids.numpy(), t_w.numpy()
        result["target_build_tok_s"] = len(batches) * batch * reply / (time.perf_counter() - t0)
        from safetensors.numpy import save_file

        save_file(tensors, targets_path)
        result["bytes_per_token"] = os.path.getsize(targets_path) / (len(batches) * batch * reply)
        return result
    if variant == "posttrain":
        from safetensors.torch import load_file

        loaded = load_file(targets_path)
        targets = [(loaded[f"ids{i}"], loaded[f"weights{i}"]) for i in range(len(batches))]
        result["bytes_per_token"] = os.path.getsize(targets_path) / (len(batches) * batch * reply)
    else:
        result["bytes_per_token"] = VOCAB * 2  # fp16 logits per token, if they were stored rather than recomputed

    def step(i):
        ids = batches[i]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = student.model(ids).last_hidden_state
            if variant == "posttrain":
                t_ids, t_w = targets[i]
                h = hidden[:, positions].reshape(-1, hidden.shape[-1])
                loss = sparse_kd_loss(h, student.lm_head, t_ids, t_w, chunk_size=CHUNK) / h.shape[0]
            else:
                with torch.no_grad():
                    t_hidden = teacher.model(ids).last_hidden_state
                mask = torch.zeros(batch, seq, dtype=torch.long)
                mask[:, positions] = 1
                if variant == "trl-chunked":
                    from trl.trainer.distillation_trainer import _chunked_divergence_loss

                    loss, _, _ = _chunked_divergence_loss(
                        hidden, t_hidden, student.lm_head.weight, teacher.lm_head.weight, mask, beta=0.0
                    )
                else:
                    from trl.experimental.gkd.gkd_trainer import GKDTrainer

                    labels = torch.where(mask.bool(), ids.roll(-1, 1), torch.full_like(ids, -100))
                    loss = GKDTrainer.generalized_jsd_loss(
                        student.lm_head(hidden), teacher.lm_head(t_hidden), labels=labels, beta=0.0
                    )
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(0)  # warm-up (allocations, optimizer state)
    base_rss = _rss_mb()
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        step(i)
    elapsed = time.perf_counter() - t0
    result["tok_s"] = steps * batch * reply / elapsed
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["rss_after_setup_mb"] = base_rss
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--targets", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print("RESULT " + json.dumps(run_variant(args.variant, args.steps, args.batch, args.seq, args.targets)))
        return

    rows = {}
    workdir = tempfile.mkdtemp(prefix="bench-distill-")
    for variant in ("trl-full", "trl-chunked", "targets", "posttrain"):
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--variant",
                variant,
                "--steps",
                str(args.steps),
                "--batch",
                str(args.batch),
                "--seq",
                str(args.seq),
                "--targets",
                os.path.join(workdir, "targets.safetensors"),
            ],
            capture_output=True,
            text=True,
        )
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            rows[variant] = {"variant": variant, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1]}
            continue
        rows[variant] = json.loads(line[0][7:])

    from rich.console import Console
    from rich.table import Table

    anchor = rows["trl-full"] if "error" not in rows["trl-full"] else rows["trl-chunked"]
    table = Table(
        title=f"KD training step, vocab {VOCAB:,}, batch {args.batch} x {args.seq} tokens "
        f"({args.seq // 2} trained), {args.steps} steps; anchor = {anchor['variant']}"
    )
    for col in (
        "variant",
        "target bytes/token",
        "x fewer bytes",
        "peak RSS MB",
        "x peak RSS",
        "tokens/s",
        "x tokens/s",
    ):
        table.add_column(col, justify="right")
    build = rows.pop("targets")
    for r in rows.values():
        if "error" in r:
            table.add_row(r["variant"], "error: " + r["error"][:60], "", "", "", "", "")
            continue
        table.add_row(
            r["variant"],
            f"{r['bytes_per_token']:,.0f}",
            f"{anchor['bytes_per_token'] / r['bytes_per_token']:.0f}x",
            f"{r['peak_rss_mb']:,.0f}",
            f"{r['peak_rss_mb'] / anchor['peak_rss_mb']:.2f}",
            f"{r['tok_s']:.1f}",
            f"{r['tok_s'] / anchor['tok_s']:.2f}",
        )
    Console().print(table)
    if "target_build_tok_s" in build:
        print(
            f"posttrain one-time teacher target build (separate process, as the Ray actors do it): "
            f"{build['target_build_tok_s']:.1f} tokens/s; cached and reused across runs, while TRL runs the "
            "teacher forward every step"
        )
    print(json.dumps({**rows, "targets": build}, indent=1))


if __name__ == "__main__":
    main()
