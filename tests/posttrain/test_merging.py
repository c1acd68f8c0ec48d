"""posttrain.merging: the WARM average (exact tensor-by-tensor, params, buffers, head, dtypes kept, M = 1, lazy
sources equal in-memory ones), WARP's SLERP of task vectors and LITI (endpoints, norm kept, linear fallback,
iteration for M > 2), HF dirs streamed to disk (sharded), LoRA merged first, mismatches refused by name."""

import math

import pytest
import torch
from safetensors.torch import save_file

from posttrain import merging
from posttrain.errors import UserError


def _net(seed: int, dtype=torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.BatchNorm1d(7), torch.nn.Linear(7, 1, bias=False))
    net.train()
    net(torch.randn(16, 5))  # moves BatchNorm's running stats and its int64 num_batches_tracked buffer
    if seed % 2:
        net(torch.randn(16, 5))  # members differ in the counter too (1 vs 2)
    return net.to(dtype)


def _expected(states, key):
    acc = states[0][key].to(torch.float64) * (1 / len(states))
    for s in states[1:]:
        acc += s[key].to(torch.float64) * (1 / len(states))
    dtype = states[0][key].dtype
    return acc.to(dtype) if dtype.is_floating_point else acc.round().to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_average_is_exact_per_tensor_including_buffers_and_head(dtype):
    states = [_net(seed, dtype).state_dict() for seed in (1, 2, 3)]
    avg = merging.average(states)
    assert set(avg) == set(states[0])
    assert {"1.running_mean", "1.running_var", "1.num_batches_tracked", "2.weight"} <= set(avg)  # buffers, head
    for key, value in avg.items():
        assert value.dtype == states[0][key].dtype, key
        assert torch.equal(value, _expected(states, key)), key
        if value.is_floating_point():
            # a real average, not a copy of one member: strictly between members where they differ
            stacked = torch.stack([s[key].float() for s in states])
            assert torch.all(value.float() >= stacked.min(0).values - 1e-2)
            assert torch.all(value.float() <= stacked.max(0).values + 1e-2)
    assert not torch.equal(avg["2.weight"], states[0]["2.weight"])
    assert avg["1.num_batches_tracked"].item() == 2  # round((2 + 1 + 2) / 3) = round(1.67)


def test_average_of_one_model_returns_it_unchanged():
    state = _net(4).state_dict()
    avg = merging.average([state])
    assert set(avg) == set(state)
    assert all(torch.equal(avg[k], state[k]) and avg[k].dtype == state[k].dtype for k in state)


def test_lazy_sources_stream_the_same_result_as_in_memory(tmp_path):
    states = [_net(seed).state_dict() for seed in (1, 2)]
    files = []
    for i, s in enumerate(states):
        files.append(tmp_path / f"m{i}.safetensors")
        save_file({k: v.contiguous() for k, v in s.items()}, str(files[-1]))
    # an HF-style model dir for the second, sharded over two files with an index
    shard_dir = tmp_path / "sharded"
    shard_dir.mkdir()
    keys = sorted(states[1])
    halves = {
        "model-00001-of-00002.safetensors": keys[: len(keys) // 2],
        "model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
    }
    for name, ks in halves.items():
        save_file({k: states[1][k].contiguous() for k in ks}, str(shard_dir / name))
    import json

    (shard_dir / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: n for n, ks in halves.items() for k in ks}})
    )
    expected = merging.average(states)
    for sources in ([files[0], files[1]], [files[0], shard_dir], [states[0], shard_dir]):
        # chunk_elements=3 forces the row-block path on every 2-D tensor
        got = merging.average(sources, chunk_elements=3)
        assert set(got) == set(expected)
        assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_mismatched_keys_shapes_and_dtypes_are_refused_naming_the_key():
    a = _net(1).state_dict()
    missing = dict(a)
    del missing["2.weight"]
    with pytest.raises(UserError, match=r"'2\.weight'.*not in"):
        merging.average([a, missing])
    wider = dict(a, **{"2.weight": torch.zeros(1, 8)})
    with pytest.raises(UserError, match=r"'2\.weight' has shape \[1, 8\]"):
        merging.average([a, wider])
    half = dict(a, **{"0.bias": a["0.bias"].half()})
    with pytest.raises(UserError, match=r"'0\.bias' is torch\.float16"):
        merging.average([a, half])
    with pytest.raises(UserError, match="no models"):
        merging.average([])


# ----------------------------------------------------------------------------------------------------
# SLERP of task vectors and LITI (WARP)


def _fine_tunes(init: dict, deltas_of) -> list[dict]:
    """Fine-tunes theta_m = init + delta_m, with deltas_of(key, tensor) -> [delta_1, delta_2, ...]."""
    per_key = {k: deltas_of(k, v) for k, v in init.items()}
    m = len(next(iter(per_key.values())))
    return [{k: init[k] + per_key[k][i] for k in init} for i in range(m)]


def _orthogonal_pair(key, tensor, norm=0.5):
    g = torch.Generator().manual_seed(len(key))
    a = torch.randn(tensor.shape, generator=g, dtype=torch.float64)
    b = torch.randn(tensor.shape, generator=g, dtype=torch.float64)
    b -= (a * b).sum() / (a * a).sum() * a
    return [(a * norm / a.norm()).float(), (b * norm / b.norm()).float()]


def _float_state(seed: int, dtype=torch.float32) -> dict:
    return {k: v for k, v in _net(seed, dtype).state_dict().items() if v.is_floating_point()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_slerp_lambda_0_and_1_return_the_endpoints_exactly(dtype):
    init = _float_state(1, dtype)
    a, b = _fine_tunes(init, lambda k, v: [0.1 * torch.randn_like(v), 0.1 * torch.randn_like(v)])
    at0, at1 = merging.slerp(init, [a, b], lam=0.0), merging.slerp(init, [a, b], lam=1.0)
    for key in init:
        assert at0[key].dtype == dtype
        assert torch.equal(at0[key], a[key]) and torch.equal(at1[key], b[key]), key


def test_slerp_keeps_the_norm_of_equal_norm_orthogonal_task_vectors():
    init = _float_state(1)
    a, b = _fine_tunes(init, _orthogonal_pair)
    merged = merging.slerp(init, [a, b], lam=0.5)
    for key in init:
        d1, d2 = (a[key] - init[key]).double(), (b[key] - init[key]).double()
        delta = (merged[key] - init[key]).double()
        assert abs(delta.norm().item() - 0.5) < 1e-5, key  # |delta| = |delta_m| = 0.5
        # Omega = 90 degrees: sin(45)/sin(90) = 0.7071 of each, where the linear mix (0.5 each) shrinks to 0.354
        assert torch.allclose(delta, 0.5**0.5 * (d1 + d2), atol=1e-6), key


def test_slerp_of_parallel_and_zero_task_vectors_is_the_linear_mix():
    init = _float_state(2)
    g = torch.Generator().manual_seed(0)
    cases = {
        "parallel": lambda k, v: [0.1 * (d := torch.randn(v.shape, generator=g)), 0.3 * d],
        "anti-parallel": lambda k, v: [0.1 * (d := torch.randn(v.shape, generator=g)), -0.2 * d],
        "one zero": lambda k, v: [torch.zeros_like(v), torch.randn(v.shape, generator=g)],
    }
    for case, deltas in cases.items():
        a, b = _fine_tunes(init, deltas)
        merged, linear = merging.slerp(init, [a, b], lam=0.3), merging.liti(a, b, 0.3)  # (1-lam) a + lam b
        for key in init:
            assert torch.allclose(merged[key], linear[key], atol=1e-6), (case, key)


def test_slerp_coefficients_angles_and_iteration():
    cos60 = torch.tensor([[1.0, 0.5], [0.5, 1.0]])  # unit task vectors 60 degrees apart
    assert merging.slerp_coefficients(cos60, 0.5) == pytest.approx([3**-0.5, 3**-0.5], abs=1e-12)
    assert merging.slerp_coefficients(cos60, 0.25) == pytest.approx(
        [
            math.sin(0.75 * math.pi / 3) / math.sin(math.pi / 3),
            math.sin(0.25 * math.pi / 3) / math.sin(math.pi / 3),
        ]
    )
    # M = 3 orthonormal: R = slerp(d1, d2, 1/2) = 0.7071 (d1 + d2), then slerp(R, d3, 1/3):
    # sin(60)/1 * 0.7071 = 0.6124 for d1 and d2, sin(30) = 0.5 for d3 -- unit norm, but not symmetric
    coef = merging.slerp_coefficients(torch.eye(3))
    assert coef == pytest.approx([0.75**0.5 * 0.5**0.5, 0.75**0.5 * 0.5**0.5, 0.5], abs=1e-12)
    assert sum(c * c for c in coef) == pytest.approx(1.0, abs=1e-12)
    # parallel task vectors (Gram of rank 1): the fallback makes the iteration the uniform average
    assert merging.slerp_coefficients(torch.ones(3, 3)) == pytest.approx([1 / 3] * 3, abs=1e-12)
    with pytest.raises(UserError, match="equal weight"):
        merging.slerp_coefficients(torch.eye(3), 0.3)


def test_slerp_of_three_models_keeps_the_norm_under_any_order_and_averages_parallel_ones():
    init = _float_state(3)
    g = torch.Generator().manual_seed(1)

    def orthonormal_triple(key, v):  # three orthogonal task vectors of norm 0.2 (QR of a random n x 3)
        q, _ = torch.linalg.qr(torch.randn(v.numel(), 3, generator=g, dtype=torch.float64))
        return [(0.2 * q[:, i]).float().reshape(v.shape) for i in range(3)]

    models = _fine_tunes({k: v for k, v in init.items() if v.numel() >= 3}, orthonormal_triple)
    base = {k: v for k, v in init.items() if v.numel() >= 3}
    for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        merged = merging.slerp(base, [models[i] for i in order])
        for key in base:
            assert abs((merged[key] - base[key]).double().norm().item() - 0.2) < 1e-5, (order, key)

    def parallel_triple(key, v):
        d = torch.randn(v.shape, generator=g)
        return [0.1 * d, 0.2 * d, 0.6 * d]

    parallel = _fine_tunes(init, parallel_triple)
    expected = merging.average(parallel)
    for order in ([0, 1, 2], [2, 1, 0]):
        merged = merging.slerp(init, [parallel[i] for i in order])
        assert all(torch.allclose(merged[k], expected[k], atol=1e-6) for k in init), order


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_liti_eta_1_is_the_merged_model_and_eta_0_the_init(dtype):
    init, merged = _float_state(1, dtype), _float_state(2, dtype)
    one, zero, mid = (merging.liti(init, merged, eta) for eta in (1.0, 0.0, 0.3))
    for key in init:
        assert torch.equal(one[key], merged[key]) and torch.equal(zero[key], init[key]), key
        assert mid[key].dtype == dtype
        expected = (0.7 * init[key].double() + 0.3 * merged[key].double()).to(dtype)
        assert torch.equal(mid[key], expected), key
    with pytest.raises(UserError, match=r"eta must be in \[0, 1\]"):
        merging.liti(init, merged, 1.5)


def test_slerp_and_liti_refuse_mismatched_models_naming_the_source_and_key(tmp_path):
    init = _net(1).state_dict()
    a, b = _net(2).state_dict(), _net(3).state_dict()
    save_file(
        {k: v.contiguous() for k, v in dict(b, **{"2.weight": torch.zeros(1, 8)}).items()},
        str(tmp_path / "wide.safetensors"),
    )
    with pytest.raises(UserError, match=r"'2\.weight' has shape \[1, 8\] in .*wide\.safetensors"):
        merging.slerp(init, [a, tmp_path / "wide.safetensors"])
    missing = {k: v for k, v in a.items() if k != "0.bias"}
    with pytest.raises(UserError, match=r"key '0\.bias' is in model 0 but not in model 1"):
        merging.slerp(init, [missing, b])
    with pytest.raises(UserError, match=r"'0\.bias' is torch\.float16 in model 1"):
        merging.liti(init, {k: v.half() for k, v in a.items()}, 0.3)
    # int counters differ between the nets (2 vs 1 BatchNorm steps): interpolating them is refused
    with pytest.raises(UserError, match=r"'1\.num_batches_tracked' is a torch\.int64 tensor that differs"):
        merging.liti(init, a, 0.3)
    with pytest.raises(UserError, match="at least two"):
        merging.slerp(init, [a])
    same_counter = dict(a, **{"1.num_batches_tracked": init["1.num_batches_tracked"]})
    assert torch.equal(
        merging.liti(init, same_counter, 0.3)["1.num_batches_tracked"], init["1.num_batches_tracked"]
    )


def test_hf_dirs_round_trip_streamed_to_disk_and_sharded(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from posttrain import models

    init_dir = models.resolve("tiny")
    init = load_file(str(init_dir / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    dirs = []
    for m in range(2):
        model = AutoModelForCausalLM.from_pretrained(init_dir)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=g))
        model.save_pretrained(tmp_path / f"ft{m}")
        dirs.append(tmp_path / f"ft{m}")
    in_memory = merging.slerp(init, [load_file(str(d / "model.safetensors")) for d in dirs], lam=0.5)
    # small row blocks and shards: the streamed path writes several files, each block straight to disk
    out = merging.slerp(init_dir, dirs, out_dir=tmp_path / "slerp", chunk_elements=1000, max_shard_bytes=400_000)
    assert out == tmp_path / "slerp"
    assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("model-*.safetensors"))) > 1
    assert (out / "config.json").is_file() and (out / "tokenizer_config.json").is_file()
    streamed = dict(merging.open_state(out))
    assert set(streamed) == set(init)
    for key in init:  # Gram sums over other blocks: equal up to float64 rounding of the angle
        assert torch.allclose(streamed[key], in_memory[key], atol=1e-6, rtol=0), key
    loaded = AutoModelForCausalLM.from_pretrained(out)  # transformers reads the sharded files we wrote
    weights = loaded.state_dict()  # (plus lm_head.weight, tied to the embedding)
    assert all(torch.equal(weights[k], streamed[k]) for k in streamed)
    AutoTokenizer.from_pretrained(out)
    final = merging.liti(init_dir, out, 0.3, out_dir=tmp_path / "liti")
    assert (final / "model.safetensors").is_file()  # one shard under the default size
    expected = merging.liti(init, streamed, 0.3)
    assert all(torch.equal(load_file(str(final / "model.safetensors"))[k], expected[k]) for k in init)
    # average streams to disk too, and writing over an input is safe (everything is read before the rename)
    expected = merging.average([load_file(str(d / "model.safetensors")) for d in dirs])
    merging.average(dirs, out_dir=dirs[0])
    assert not (dirs[0] / "model.safetensors.index.json").exists()
    averaged = load_file(str(dirs[0] / "model.safetensors"))
    assert all(torch.equal(averaged[k], expected[k]) for k in init)


def test_lora_adapters_are_merged_into_full_weights_first(tmp_path, tiny_model_and_tokenizer):
    from posttrain import models

    base_dir = models.resolve("tiny")
    model, _ = models.load_causal_lm("tiny")
    peft_model = models.apply_lora(model, models.Lora(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # B starts at zero: make the adapter change the weights
    peft_model.save_pretrained(tmp_path / "adapter")
    with pytest.raises(UserError, match="LoRA adapter.*merge_lora"):
        merging.slerp(base_dir, [tmp_path / "adapter", base_dir])
    full = merging.merge_lora(tmp_path / "adapter", tmp_path / "full", base=str(base_dir))
    expected = peft_model.merge_and_unload().state_dict()
    got = merging.open_state(full)
    changed = [k for k in got if "q_proj" in k and not torch.equal(got[k], merging.open_state(base_dir)[k])]
    assert changed
    assert all(torch.allclose(got[k], expected[k], atol=1e-6) for k in got)
