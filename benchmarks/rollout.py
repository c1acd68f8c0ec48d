"""Best-of-N sampling throughput: posttrain.rollout.sample (all prompts x N in one batched decode, prompt
prefilled once, KV cache repeated N times) against HF `generate` called once per prompt and per sample (the
anchor), same model, same settings (temperature 1, top-p 1, stop at <end_of_turn>/eos), same run.

Tokens/s counts generated completion tokens (stop token included, padding after a stop excluded). The anchor's
rate is measured on the first --anchor_calls (prompt, sample) calls (each call is independent, so the rate
does not depend on how many are run); the default runs all of them.

  .venv/bin/python benchmarks/rollout.py                      # tiny Gemma 3 (6 layers, d=64, 262-id vocab)
  .venv/bin/python benchmarks/rollout.py --model gemma3-270m  # the embedded Gemma 3 270M
  .venv/bin/python benchmarks/rollout.py --reward_wait        # share of an RL step spent waiting for rewards
  .venv/bin/python benchmarks/rollout.py --model gemma3-270m --freeze_embeddings --bf16  # as rl samples

--reward_wait runs `posttrain rl` steps (J-BOND, 8 prompts x (1 policy + 2 anchor samples)) on the demo
policy with the demo's rewards (math + code + the WARM reward model, which is the costly one), twice in the
same run: the anchor scores the samples and waits for the scores before it computes the anchor/init
log-probs (overlap_rewards=false); posttrain computes those log-probs while the rewards are scored in the
reward workers. Needs `make demo`'s runs/demo/{sft,rm} (falls back to a tiny policy with math + format rewards
otherwise).

Measured 2026-11-24, CPU, 2 shared cores (other jobs running; load 2-13), N=8, 16 prompts, 64 new tokens:
  tiny, all 128 anchor calls:       HF 15.8 tok/s, rollout 284.5 tok/s: 18.0x
  gemma3-270m, 16 of 128 calls:     HF  4.7 tok/s, rollout 118.3 tok/s: 25.1x
Measured 2026-11-24 (load 1.2), gemma3-270m --freeze_embeddings --bf16 (how rl samples), 8 prompts, N=4, 32 new
tokens, 4 anchor calls: rollout 167.9 tok/s = 13.6x HF; before the prefill fix (logits_to_keep=1 broadcast the
frozen bf16 head per prompt) 60.1 tok/s = 5.0x, in the same session.
"""

import argparse
import os
import time

import torch

from posttrain.data import prompt_ids
from posttrain.models import load_causal_lm
from posttrain.rollout import sample, stop_token_ids


def reward_wait(args) -> None:
    import json
    import tempfile
    from pathlib import Path

    from posttrain import rl
    from posttrain.scoring import Rewards

    demo = Path("runs/demo/sft/DONE").exists() and Path("runs/demo/rm/DONE").exists()
    base = (
        dict(
            policy="runs/demo/sft",
            data=["data/demo/sft.jsonl"],
            max_new_tokens=32,
            rewards=Rewards(
                names=["math", "code", "reward_model"], weights=[1.0, 1.0, 0.1], reward_model="runs/demo/rm"
            ),
        )
        if demo
        else dict(
            policy="tiny",
            data=["data/tiny/sft.jsonl"],
            rewards=Rewards(names=["math", "format"]),
            max_new_tokens=16,
        )
    )
    steps, per = args.wait_steps, 8
    print(
        f"policy={base['policy']} rewards={base['rewards'].names} steps={steps} prompts/step={per} "
        f"load={os.getloadavg()[0]:.1f}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, overlap in (("score, then log-probs (anchor)", False), ("posttrain: overlapped", True)):
            out = Path(tmp) / str(overlap)
            out.mkdir()
            rl.train(
                rl.Config(
                    **base,
                    steps=steps,
                    prompts_per_step=per,
                    generation_batch=per,
                    overlap_rewards=overlap,
                    save_steps=1000,
                    log_rollouts=False,
                    output_dir=str(out),
                ),
                out,
            )
            m = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]  # warm-up
            total = sum(x["time/step"] for x in m)
            rows.append(
                (
                    label,
                    sum(x["time/generate"] for x in m) / len(m),
                    sum(x["time/reward_wait"] for x in m) / len(m),
                    total / len(m),
                    sum(x["time/reward_wait"] for x in m) / total,
                )
            )
    print(
        f"\n{'variant':<38}{'generate s':>11}{'reward wait s':>14}{'step s':>9}{'wait share':>11}{'vs anchor':>10}"
    )
    for label, gen, wait, step, share in rows:
        print(f"{label:<38}{gen:>11.2f}{wait:>14.3f}{step:>9.2f}{share:>11.1%}{share / rows[0][4]:>10.2f}")
    print(f"(mean over steps 2..{steps}; load {os.getloadavg()[0]:.1f} at the end)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reward_wait", action="store_true", help="measure the RL step's reward-wait share")
    ap.add_argument("--wait_steps", type=int, default=4)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--new_tokens", type=int, default=64)
    ap.add_argument("--anchor_calls", type=int, default=None, help="time only this many generate calls")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--freeze_embeddings",
        action="store_true",
        help="freeze the (tied) embeddings/LM head, as `posttrain rl` does by default",
    )
    ap.add_argument("--bf16", action="store_true", help="sample from a bf16 copy, as `posttrain rl` and eval do")
    args = ap.parse_args()
    if args.reward_wait:
        return reward_wait(args)

    model, tok = load_causal_lm(args.model, dtype=torch.bfloat16 if args.bf16 else None)
    model.eval()
    if args.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    prompts = [
        prompt_ids(tok, [{"role": "user", "content": f"Question {i}: what is {i} + {2 * i}? " * (1 + i % 3)}])
        for i in range(args.prompts)
    ]
    print(
        f"model={args.model} frozen_head={args.freeze_embeddings} bf16={args.bf16} device={device} "
        f"threads={torch.get_num_threads()} load={os.getloadavg()[0]:.1f} "
        f"prompts={args.prompts} n={args.n} new_tokens={args.new_tokens} "
        f"prompt_len={min(map(len, prompts))}..{max(map(len, prompts))}"
    )

    sample(model, tok, prompts[:2], 2, max_new_tokens=4)  # warm-up
    t = time.perf_counter()
    r = sample(
        model,
        tok,
        prompts,
        args.n,
        max_new_tokens=args.new_tokens,
        generator=torch.Generator().manual_seed(args.seed),
    )
    ours_s = time.perf_counter() - t
    ours_tokens = int(r.mask.sum())

    calls = [(p, j) for p in prompts for j in range(args.n)][: args.anchor_calls]
    stops = stop_token_ids(tok)
    torch.manual_seed(args.seed)
    t = time.perf_counter()
    hf_tokens = 0
    with torch.no_grad():
        for p, _ in calls:
            ids = torch.tensor([p], device=device)
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=args.new_tokens,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                eos_token_id=stops,
                pad_token_id=tok.pad_token_id,
            )
            hf_tokens += out.shape[1] - len(p)
    hf_s = time.perf_counter() - t

    hf_rate, ours_rate = hf_tokens / hf_s, ours_tokens / ours_s
    print(f"\n{'method':<44}{'tokens':>8}{'seconds':>10}{'tokens/s':>11}{'ratio':>8}")
    print(
        f"{'HF generate per prompt x sample (anchor)':<44}{hf_tokens:>8}{hf_s:>10.2f}{hf_rate:>11.1f}{1.0:>8.2f}"
    )
    print(
        f"{'rollout.sample, one batched decode':<44}{ours_tokens:>8}{ours_s:>10.2f}{ours_rate:>11.1f}"
        f"{ours_rate / hf_rate:>8.2f}"
    )
    if len(calls) < args.prompts * args.n:
        print(f"(anchor timed on {len(calls)} of {args.prompts * args.n} calls)")


if __name__ == "__main__":
    main()
