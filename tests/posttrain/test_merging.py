"""posttrain.merging.average: exact tensor-by-tensor average (params, buffers, head), dtypes kept, M = 1,
lazy (safetensors / HF dir) sources equal in-memory ones, mismatches refused naming the key."""

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
    halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, ks in halves.items():
        save_file({k: states[1][k].contiguous() for k in ks}, str(shard_dir / name))
    import json

    (shard_dir / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: n for n, ks in halves.items() for k in ks}}))
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
