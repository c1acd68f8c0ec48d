"""Weight-space maths on state dicts: the uniform average of WARM (later also EMA, SLERP and LITI for WARP).

A model is a `state dict` source: an in-memory mapping name -> tensor, a `.safetensors` file, or an HF model
dir (single-file or sharded safetensors). Sources on disk are read lazily, one tensor at a time, so averaging
M models holds one output model plus one tensor per member in memory, never M models.

    average([dir_a, dir_b, dir_c])   ->  {name: (1/M) * sum_m theta_m[name]}   (each tensor in its own dtype)
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch

from posttrain.errors import UserError


class _Lazy(Mapping):
    """Read-only name -> tensor view of safetensors file(s); a tensor is read when it is asked for."""

    def __init__(self, files: list[Path], where: str):
        from safetensors import safe_open

        self.where = where
        self._handles, self._file_of = [], {}
        for f in files:
            handle = safe_open(str(f), framework="pt")
            self._handles.append(handle)
            for key in handle.keys():
                self._file_of[key] = handle

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._file_of[key].get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._file_of)

    def __len__(self) -> int:
        return len(self._file_of)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._file_of[key].get_slice(key).get_shape())

    def dtype(self, key: str) -> torch.dtype | str:
        name = self._file_of[key].get_slice(key).get_dtype()
        return _SAFETENSORS_DTYPES.get(name, name)

    def rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        return self._file_of[key].get_slice(key)[start:stop]


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def open_state(source) -> Mapping[str, torch.Tensor]:
    """A state-dict view of a mapping, a .safetensors file or an HF model dir."""
    if isinstance(source, Mapping):
        return source
    path = Path(source)
    if path.is_file() and path.suffix == ".safetensors":
        return _Lazy([path], str(path))
    if path.is_dir():
        index = path / "model.safetensors.index.json"
        if index.is_file():
            files = sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()})
            return _Lazy(files, str(path))
        if (path / "model.safetensors").is_file():
            return _Lazy([path / "model.safetensors"], str(path))
        raise UserError(f"{path}: no model.safetensors (or sharded index) to read weights from")
    raise UserError(f"not a model dir or .safetensors file: {path}")


def _name(source, i: int) -> str:
    return getattr(source, "where", None) or (str(source) if not isinstance(source, Mapping) else f"model {i}")


def check_compatible(states: Sequence[Mapping[str, torch.Tensor]], names: Sequence[str]) -> None:
    """Same keys, and per key the same shape and dtype, in every state dict; otherwise a UserError naming
    the first offending key and the two models."""
    ref = states[0]
    ref_keys = set(ref)
    for state, name in zip(states[1:], names[1:]):
        keys = set(state)
        if keys != ref_keys:
            key = sorted(ref_keys ^ keys)[0]
            has, lacks = (names[0], name) if key in ref_keys else (name, names[0])
            raise UserError(f"cannot merge: key '{key}' is in {has} but not in {lacks} "
                            f"(models of different architectures)")
    for key in sorted(ref_keys):
        ref_shape, ref_dtype = _shape(ref, key), _dtype(ref, key)
        for state, name in zip(states[1:], names[1:]):
            if _shape(state, key) != ref_shape:
                raise UserError(f"cannot merge: '{key}' has shape {list(_shape(state, key))} in {name} but "
                                f"{list(ref_shape)} in {names[0]}")
            if _dtype(state, key) != ref_dtype:
                raise UserError(f"cannot merge: '{key}' is {_dtype(state, key)} in {name} but {ref_dtype} "
                                f"in {names[0]}")


def _shape(state, key) -> tuple[int, ...]:
    return state.shape(key) if isinstance(state, _Lazy) else tuple(state[key].shape)


def _dtype(state, key):
    return state.dtype(key) if isinstance(state, _Lazy) else state[key].dtype


def _rows(state, key, start: int, stop: int) -> torch.Tensor:
    return state.rows(key, start, stop) if isinstance(state, _Lazy) else state[key][start:stop]


def average(sources: Sequence, weights: Sequence[float] | None = None, *,
            chunk_elements: int = 1 << 22) -> dict[str, torch.Tensor]:
    """Weighted average (uniform by default) of M state dicts, tensor by tensor; each result keeps its
    input dtype. Floats are summed in float64 and rounded once to their dtype; integer and bool tensors
    (counters such as BatchNorm's num_batches_tracked) are rounded to the nearest value. M = 1 returns the
    member's tensors unchanged. Large tensors (a 262k-row embedding) are read and summed in row blocks of
    about `chunk_elements`, so the float64 accumulator never holds a whole one."""
    if not sources:
        raise UserError("nothing to average: no models given")
    states = [open_state(s) for s in sources]
    names = [_name(s, i) for i, s in enumerate(states)]
    if weights is None:
        weights = [1.0 / len(states)] * len(states)
    if len(weights) != len(states) or abs(sum(weights) - 1.0) > 1e-9:
        raise UserError(f"merge weights must be one per model and sum to 1, got {list(weights)}")
    check_compatible(states, names)
    out = {}
    for key in states[0]:
        if len(states) == 1:
            out[key] = states[0][key].clone()
            continue
        shape, dtype = _shape(states[0], key), _dtype(states[0], key)
        result = torch.empty(shape, dtype=dtype)
        if not shape:  # 0-dim
            result.copy_(_mean([s[key] for s in states], weights, dtype))
        else:
            per_row = max(1, result[0].numel())
            step = max(1, chunk_elements // per_row)
            for start in range(0, shape[0], step):
                stop = min(start + step, shape[0])
                result[start:stop] = _mean([_rows(s, key, start, stop) for s in states], weights, dtype)
        out[key] = result
    return out


def _mean(tensors: list[torch.Tensor], weights: Sequence[float], dtype: torch.dtype) -> torch.Tensor:
    acc = tensors[0].to(torch.float64) * weights[0]
    for t, w in zip(tensors[1:], weights[1:]):
        acc += t.to(torch.float64) * w
    if dtype.is_floating_point or dtype.is_complex:
        return acc.to(dtype)
    return acc.round().to(dtype)
