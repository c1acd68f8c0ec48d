"""Best-of-N sampling throughput: posttrain.rollout.sample (all prompts x N in one batched decode, prompt
prefilled once, KV cache repeated N times) against HF `generate` called once per prompt and per sample (the
anchor), same model, same settings (temperature 1, top-p 1, stop at <end_of_turn>/eos), same run.

Tokens/s counts generated completion tokens (stop token included, padding after a stop excluded). The anchor's
rate is measured on the first --anchor_calls (prompt, sample) calls (each call is independent, so the rate
does not depend on how many are run); the default runs all of them.

  .venv/bin/python benchmarks/rollout.py                      # tiny Gemma 3 (6 layers, d=64, 262-id vocab)
  .venv/bin/python benchmarks/rollout.py --model gemma3-270m  # the embedded Gemma 3 270M

Measured 2026-11-24, CPU, 2 shared cores (other jobs running; load 2-13), N=8, 16 prompts, 64 new tokens:
  tiny, all 128 anchor calls:       HF 15.8 tok/s, rollout 284.5 tok/s: 18.0x
  gemma3-270m, 16 of 128 calls:     HF  4.7 tok/s, rollout 118.3 tok/s: 25.1x
"""

import argparse
import os
import time

import torch

from posttrain.data import prompt_ids
from posttrain.models import load_causal_lm
from posttrain.rollout import sample, stop_token_ids


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--new_tokens", type=int, default=64)
    ap.add_argument("--anchor_calls", type=int, default=None, help="time only this many generate calls")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    model, tok = load_causal_lm(args.model)
    model.eval()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    prompts = [prompt_ids(tok, [{"role": "user", "content": f"Question {i}: what is {i} + {2 * i}? " * (1 + i % 3)}])
               for i in range(args.prompts)]
    print(f"model={args.model} device={device} threads={torch.get_num_threads()} load={os.getloadavg()[0]:.1f} "
          f"prompts={args.prompts} n={args.n} new_tokens={args.new_tokens} "
          f"prompt_len={min(map(len, prompts))}..{max(map(len, prompts))}")

    sample(model, tok, prompts[:2], 2, max_new_tokens=4)  # warm-up
    t = time.perf_counter()
    r = sample(model, tok, prompts, args.n, max_new_tokens=args.new_tokens,
               generator=torch.Generator().manual_seed(args.seed))
    ours_s = time.perf_counter() - t
    ours_tokens = int(r.mask.sum())

    calls = [(p, j) for p in prompts for j in range(args.n)][:args.anchor_calls]
    stops = stop_token_ids(tok)
    torch.manual_seed(args.seed)
    t = time.perf_counter()
    hf_tokens = 0
    with torch.no_grad():
        for p, _ in calls:
            ids = torch.tensor([p], device=device)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                                 do_sample=True, temperature=1.0, top_p=1.0, top_k=0, eos_token_id=stops,
                                 pad_token_id=tok.pad_token_id)
            hf_tokens += out.shape[1] - len(p)
    hf_s = time.perf_counter() - t

    hf_rate, ours_rate = hf_tokens / hf_s, ours_tokens / ours_s
    print(f"\n{'method':<44}{'tokens':>8}{'seconds':>10}{'tokens/s':>11}{'ratio':>8}")
    print(f"{'HF generate per prompt x sample (anchor)':<44}{hf_tokens:>8}{hf_s:>10.2f}{hf_rate:>11.1f}{1.0:>8.2f}")
    print(f"{'rollout.sample, one batched decode':<44}{ours_tokens:>8}{ours_s:>10.2f}{ours_rate:>11.1f}"
          f"{ours_rate / hf_rate:>8.2f}")
    if len(calls) < args.prompts * args.n:
        print(f"(anchor timed on {len(calls)} of {args.prompts * args.n} calls)")


if __name__ == "__main__":
    main()
