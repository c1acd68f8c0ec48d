"""`posttrain filter`: clean a chat dataset with data_filters; write clean rows, rejects and a report.

    posttrain filter --config configs/demo/filter.yaml [--input raw.jsonl --output runs/x] [pii='{action: drop}']

Reads jsonl / parquet / an HF datasets dir; rows need `messages` (a list of {role, content} with string
content). Bad rows are rejects with a reason (or, with on_bad_row=error, one error naming file:line).
The chain of pure batch filters runs under `datasets.map(batched=True, num_proc=N)` here, or as Ray Data
`map_batches` when `ray_address` (or `use_ray`) is set; dedup's keep-the-first decision is one pass in the
driver over the signatures the workers computed. The driver does little else, as it runs alone: it hands
the workers the input lines as Arrow strings (memory-mapped files in a temp dir), they parse, filter and
serialise each row, and it writes their output lines straight from the Arrow buffers. Output dir:
  clean.jsonl    kept rows, original columns, PII redacted
  rejects.jsonl  every dropped row and every redacted row: action, filter, reasons (with spans), the
                 original row -- it holds the raw PII, so treat it like the input
  report.json    counts per filter, examples, throughput; report.md the same for people
Every input row is in clean.jsonl or (dropped) in rejects.jsonl, never both, never neither.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
import time
from collections import Counter
from json.encoder import encode_basestring as _json_str  # a str as json.dumps(..., ensure_ascii=False) writes it
from pathlib import Path

from posttrain import artifacts
from posttrain.config import doc
from posttrain.errors import UserError

ROLES = ("system", "user", "assistant")
CLEAN, REJECTS, REPORT = "clean.jsonl", "rejects.jsonl", "report.json"


@dataclasses.dataclass
class Config:
    input: str = doc("data/demo/raw.jsonl", "chat dataset: a .jsonl or .parquet file, or an HF datasets dir")
    output: str = doc("runs/demo/filter", "output dir: clean.jsonl, rejects.jsonl, report.json, DONE")
    filters: list[str] = doc(
        ["safety", "identity", "decontam", "pii", "dedup"],
        "filters in order (pii, safety, identity, dedup, decontam, or 'module:function'); "
        "each sees the rows the earlier ones kept, with their redactions",
    )
    pii: dict = doc(
        {}, "PII options: action (redact|drop), actions {TYPE: drop}, types, roles, allow, phone_region"
    )
    safety: dict = doc(
        {},
        "safety options: roles, categories, extra_patterns, classifier (module:fn or model dir), "
        "threshold, unsafe_label",
    )
    identity: dict = doc({}, "self-identification options: name, developers, roles, other_names, other_developers")
    dedup: dict = doc({}, "dedup options: exact, near, threshold (Jaccard), num_perm, shingle, roles")
    decontam: dict = doc({}, "decontamination options: eval_files, n (13), roles, fields, min_words")
    on_bad_row: str = doc(
        "reject",
        "a row that is not JSON, lacks messages or has non-string content: "
        "'reject' (to rejects.jsonl with the reason) or 'error' (stop)",
    )
    batch_size: int = doc(512, "rows per filter batch")
    num_proc: int = doc(0, "datasets.map worker processes (0 = one per core)")
    use_ray: bool = doc(False, "run the filters with Ray Data even without ray_address (embedded local Ray)")
    ray_address: str | None = doc(None, "Ray cluster address; set -> filters run as Ray Data map_batches")
    examples: int = doc(3, "examples per filter in the report")
    overwrite: bool = doc(False, "replace a finished output dir")


# --------------------------------------------------------------------------------------------- reading
def _check_row(row) -> str | None:
    """Why `row` cannot be filtered, or None."""
    if not isinstance(row, dict):
        return f"row is a JSON {type(row).__name__}, not an object"
    if "messages" not in row:
        return "missing 'messages'"
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"message {i} is not an object"
        if m.get("role") not in ROLES:
            return f"message {i}: role must be one of {list(ROLES)}, got {m.get('role')!r}"
        if not isinstance(m.get("content"), str):
            return f"message {i}: content must be a string, got {type(m.get('content')).__name__}"
    return None


def _iter_input(path: Path):
    """(source, row) for each input row of a parquet file or an HF datasets dir."""
    if path.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:  # not a save_to_disk dir
            raise UserError(f"input dir {path} is not an HF datasets dir (save_to_disk): {e}") from None
        if isinstance(ds, datasets.DatasetDict):
            raise UserError(f"input {path} holds splits {list(ds)}; point input at one split's dir")
        for i, row in enumerate(ds):
            yield f"{path}[{i}]", row
    else:
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}[{i}]", row


class Input:
    """The input rows as JSON text for the workers, `table` = {_row: index, _line: JSON text}, plus where each
    row came from and the reject records of rows the driver already knows are bad (parquet/HF inputs). A
    jsonl file becomes the table without a Python object per line (its bytes are the Arrow string data);
    the workers parse and check the lines, which is most of the reading work."""

    def __init__(self, path: str, on_bad_row: str):
        import pyarrow as pa

        self.path = Path(path)
        if not self.path.exists():
            raise UserError(f"input not found: {self.path}")
        self.bad: list[dict] = []
        self.jsonl = not (self.path.is_dir() or self.path.suffix == ".parquet")
        if self.jsonl:
            lines, self.lineno = _read_lines(self.path)
            self.rows = len(self.lineno)
            self.table = pa.table({"_row": pa.array(range(self.rows), pa.int64()), "_line": lines})
            return
        rows, texts, self.rows = [], [], 0
        for source, row in _iter_input(self.path):
            reason = _check_row(row)
            if reason is not None:
                if on_bad_row == "error":
                    raise UserError(f"{source}: {reason}")
                self.bad.append(_bad_record(self.rows, source, reason, row))
            else:
                rows.append(self.rows)
                texts.append(json.dumps(row, ensure_ascii=False, default=str))
            self.rows += 1
        self.table = pa.table({"_row": pa.array(rows, pa.int64()), "_line": pa.array(texts, pa.string())})

    def source(self, row: int) -> str:
        return f"{self.path}:{self.lineno[row]}" if self.jsonl else f"{self.path}[{row}]"


def _read_lines(path: Path):
    """(Arrow strings: the non-blank lines of a text file, each with its newline; their line numbers), as
    `open(path, errors="replace")` would give them, from the file's bytes with numpy."""
    import numpy as np
    import pyarrow as pa

    data = path.read_bytes()
    try:
        data.decode("utf-8")  # the bytes are the Arrow string data, so they must be valid UTF-8
    except UnicodeDecodeError:
        data = data.decode("utf-8", errors="replace").encode("utf-8")
    if b"\r" in data:  # universal newlines: let Python split it
        with open(path, encoding="utf-8", errors="replace") as f:
            texts = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
        return pa.array([t for _, t in texts], pa.large_string()), [n for n, _ in texts]
    arr = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(arr == 10) + 1
    offsets = np.concatenate([[0], ends, [len(arr)] if len(arr) and arr[-1] != 10 else []]).astype(np.int64)
    # A line starting with an ASCII byte that is not whitespace is not blank; the others (rare) are checked
    # as text (str.strip knows Unicode whitespace).
    solid = np.ones(256, bool)
    solid[128:] = False
    solid[np.frombuffer(b" \t\n\x0b\x0c\r\x1c\x1d\x1e\x1f", np.uint8)] = False
    maybe_blank = np.flatnonzero(~solid[arr[offsets[:-1]]]) if len(arr) else []
    keep = np.ones(len(offsets) - 1, bool)
    for i in maybe_blank:
        keep[i] = bool(data[offsets[i] : offsets[i + 1]].decode("utf-8", errors="replace").strip())
    lines = pa.LargeStringArray.from_buffers(len(keep), pa.py_buffer(offsets), pa.py_buffer(data))
    if not keep.all():
        lines = lines.filter(pa.array(keep))
    return lines, (np.flatnonzero(keep) + 1).tolist()


def _bad_record(row: int, source: str, reason: str, data) -> dict:
    return {
        "row": row,
        "source": source,
        "action": "dropped",
        "filter": "input",
        "reasons": [{"filter": "input", "reason": reason}],
        "data": data,
    }


def _parse(line: str):
    """(row, None) or (None, why it cannot be filtered)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"invalid JSON: {e.msg} (column {e.colno})"
    reason = _check_row(row)
    return (None, reason) if reason else (row, None)


def _restore(row: dict, messages: list[dict]) -> dict:
    """`row` with `messages` (role and content) in place of its own, each message's other keys kept."""
    out = dict(row)
    out["messages"] = [
        m if len(x) == 2 else {**m, **{k: v for k, v in x.items() if k not in ("role", "content")}}
        for m, x in zip(messages, row["messages"])
    ]
    return out


# --------------------------------------------------------------------------------------------- running
COLUMNS = {
    "_row": "int64",
    "_keep": "bool",
    "_reasons": "string",
    "_bad": "string",
    "_id": "string",
    "_out": "string",
    "_data": "string",
    "_nbytes": "int64",
    "_dedup_hash": "string",
    "_dedup_minhash": "binary",
}


def filter_lines(rows: list[int], lines: list[str], chain) -> dict[str, list]:
    """The worker's part, for rows given as JSON text: parse and check them, run the chain, and serialise.

    Per row: `_keep`; `_reasons` (JSON list of reasons); `_bad` (why the row cannot be filtered, or None);
    `_id`; `_out` (the row with the filters' rewrites, the JSON line clean.jsonl gets if it is kept);
    `_data` (the row as it came in, as rejects.jsonl shows it, only if that is not `_out`); `_nbytes`
    (bytes of message text); dedup's signatures when dedup is in the chain.
    """
    from data_filters import run_chain

    n = len(lines)
    parsed = [_parse(line) for line in lines]
    good = [k for k in range(n) if parsed[k][0] is not None]
    originals = [parsed[k][0] for k in good]
    ids = [str(row.get("id", f"#{rows[k]}")) for k, row in zip(good, originals)]
    messages = [[{"role": m["role"], "content": m["content"]} for m in row["messages"]] for row in originals]
    res = run_chain(chain, {"_row": [rows[k] for k in good], "_id": ids, "messages": messages})
    out = {
        "_row": list(rows),
        "_keep": [False] * n,
        "_reasons": ["[]"] * n,
        "_bad": [p[1] for p in parsed],
        "_id": [None] * n,
        "_out": [None] * n,
        "_data": [None] * n,
        "_nbytes": [0] * n,
    }
    extra = [c for c in ("_dedup_hash", "_dedup_minhash") if c in res]
    for c in extra:
        out[c] = [None] * n
    for j, k in enumerate(good):
        out["_keep"][k] = res["_keep"][j]
        out["_reasons"][k] = res["_reasons"][j]
        out["_id"][k] = ids[j]
        out["_out"][k] = json.dumps(_restore(originals[j], res["messages"][j]), ensure_ascii=False) + "\n"
        before = [{"role": m["role"], "content": m["content"]} for m in originals[j]["messages"]]  # not the
        if res["messages"][j] != before:  # filters' copies: a filter may (wrongly) have changed those in place
            out["_data"][k] = json.dumps(_restore(originals[j], before), ensure_ascii=False)
        out["_nbytes"][k] = sum(len(c) if (c := m["content"]).isascii() else len(c.encode()) for m in before)
        for c in extra:
            out[c][k] = res[c][j]
    return out


def _arrow_fn(table, chain):
    """filter_lines on an Arrow batch, to an Arrow table (datasets.map and Ray Data both take one): no
    per-value Python conversion on the way in or out."""
    import pyarrow as pa

    out = filter_lines(table.column("_row").to_pylist(), table.column("_line").to_pylist(), chain)
    # Fixed types, so blocks concatenate even when a block's column is all empty or all None.
    return pa.Table.from_pydict(
        out, schema=pa.schema([pa.field(name, pa.type_for_alias(COLUMNS[name])) for name in out])
    )


def run_local(table, chain, batch_size: int, num_proc: int, tmp: str):
    """datasets.map over the rows with num_proc processes. The input and the output are Arrow files in
    `tmp` (memory-mapped), so the worker processes are handed file names, not pickled tables."""
    import datasets
    import pyarrow as pa

    n = table.num_rows
    path = os.path.join(tmp, "input.arrow")
    with pa.OSFile(path, "wb") as f, pa.ipc.new_stream(f, table.schema) as writer:
        writer.write_table(table)
    ds = datasets.Dataset.from_file(path).with_format("arrow")
    procs = num_proc or os.cpu_count() or 1
    procs = max(1, min(procs, n // batch_size))  # a process per batch at least, or the fork costs more
    with_dedup = any(name == "dedup" for name, _, _ in chain)
    names = [c for c in COLUMNS if with_dedup or not c.startswith("_dedup")]
    features = datasets.Features({c: datasets.Value(COLUMNS[c]) for c in names})
    out = ds.map(
        _arrow_fn,
        batched=True,
        batch_size=batch_size,
        num_proc=procs if procs > 1 else None,
        fn_kwargs={"chain": chain},
        remove_columns=table.column_names,
        features=features,
        cache_file_name=os.path.join(tmp, "filtered.arrow"),
        load_from_cache_file=False,
        new_fingerprint=f"filter-{time.time_ns()}",
        desc="filtering",
    )
    return out.data.table


def run_ray(table, chain, batch_size: int, address: str | None):
    import pyarrow as pa

    from posttrain import cluster

    ray = cluster.init(address)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    out = ray.data.from_arrow(table).map_batches(
        _arrow_fn, batch_size=batch_size, batch_format="pyarrow", fn_kwargs={"chain": chain}
    )
    tables = [t for t in ray.get(out.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables(tables, promote_options="permissive").sort_by("_row")


class Results:
    """The workers' columns (an Arrow table in input order) and dedup's verdicts on top of them."""

    def __init__(self, table, chain):
        import numpy as np

        self.table = table
        col = table.column
        self.row = col("_row").to_numpy().tolist()
        self.keep = np.asarray(col("_keep").to_numpy(zero_copy_only=False), bool).copy()
        self.bad = col("_bad").to_pylist()
        self.reasons = col("_reasons").to_pylist()
        self.ids = col("_id").to_pylist()
        self.dedup: dict[int, list] = {}  # position -> dedup's reasons, for the rows it drops
        dedup = next((fn for name, fn, _ in chain if name == "dedup"), None)
        if dedup is not None and table.num_rows:
            from data_filters import dedup as dd

            # Rows an earlier filter dropped have no signature and take no part: decide sees the others.
            sigs = col("_dedup_minhash").combine_chunks()
            where = np.flatnonzero(sigs.is_valid().to_numpy(zero_copy_only=False))
            hashes = col("_dedup_hash").to_pylist()
            res = dd.decide(
                [hashes[r] for r in where.tolist()],
                _fixed_binary(sigs, dedup.keywords["num_perm"]),
                self.keep[where].tolist(),
                [self.ids[r] for r in where.tolist()],
                **dedup.keywords,
            )
            for r, k, reasons in zip(where.tolist(), res.keep, res.reasons):
                if not k:
                    self.keep[r] = False
                    self.dedup[r] = reasons

    def reasons_of(self, r: int) -> list[dict]:
        chain = json.loads(self.reasons[r]) if self.reasons[r] != "[]" else []
        return chain + self.dedup.get(r, [])

    def reasons_json(self, r: int) -> str:
        """reasons_of(r) as JSON text, as json.dumps(..., ensure_ascii=False) writes it, from the workers'."""
        text, extra = self.reasons[r], self.dedup.get(r)
        if not extra:
            return text
        if all(isinstance(v, str) for x in extra for v in x.values()):  # dedup's: strings only, the common case
            extra_json = (
                "["
                + ", ".join(
                    "{" + ", ".join(f"{_json_str(k)}: {_json_str(v)}" for k, v in x.items()) + "}" for x in extra
                )
                + "]"
            )
        else:
            extra_json = json.dumps(extra, ensure_ascii=False)
        return extra_json if text == "[]" else text[:-1] + ", " + extra_json[1:]


def _fixed_binary(array, num_perm: int):
    """The signatures of the valid rows of a binary Arrow array as a (valid rows, num_perm) array, without
    a bytes object per row or a copy, if they are all of one width; else a list of them."""
    import numpy as np

    offsets = np.frombuffer(array.buffers()[1], np.int32)[array.offset : array.offset + len(array) + 1]
    lengths = np.diff(offsets)
    widths = np.unique(lengths[array.is_valid().to_numpy(zero_copy_only=False)])
    if len(widths) != 1 or widths[0] not in (4 * num_perm, 8 * num_perm):
        return [x for x in array.to_pylist() if x is not None]
    dtype = "<u4" if widths[0] == 4 * num_perm else "<u8"
    data = np.frombuffer(array.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]  # null rows take no bytes
    return data.view(dtype).reshape(-1, num_perm)


def run_filters(config: Config, inp: Input, chain, tmp: str) -> Results:
    """The chain over every row, local or on Ray, then dedup's global pass; in input order. `tmp`: a
    directory for the local engine's Arrow files, which the result maps, so it must outlive it."""
    table = inp.table
    if not table.num_rows:
        import pyarrow as pa

        out = pa.table({c: pa.array([], pa.type_for_alias(t)) for c, t in COLUMNS.items()})
    elif config.ray_address or config.use_ray:
        out = run_ray(table, chain, config.batch_size, config.ray_address)
    else:
        out = run_local(table, chain, config.batch_size, config.num_proc, tmp)
    if config.on_bad_row == "error" and out.column("_bad").null_count < out.num_rows:
        first = next(r for r, why in enumerate(out.column("_bad").to_pylist()) if why)
        row = out.column("_row")[first].as_py()
        raise UserError(f"{inp.source(row)}: {out.column('_bad')[first].as_py()}")
    return Results(out, chain)


# --------------------------------------------------------------------------------------------- writing
def run(config: Config) -> str:
    from data_filters import FILTERS, FilterError, build_chain

    if config.on_bad_row not in ("reject", "error"):
        raise UserError(f"on_bad_row must be 'reject' or 'error', got {config.on_bad_row!r}")
    if config.batch_size < 1:
        raise UserError("batch_size must be >= 1")
    options = {name: getattr(config, name) for name in FILTERS if getattr(config, name)}
    try:
        chain = build_chain(config.filters, options)  # all config errors surface before any output is touched
    except FilterError as e:  # data_filters stands alone; its errors become this stage's one-line error
        raise UserError(str(e)) from None
    out_dir = Path(config.output)
    if out_dir.exists() and any(out_dir.iterdir()) and not config.overwrite:  # say so before the work
        state = "a finished run" if artifacts.is_done(out_dir) else "an unfinished run"
        raise UserError(f"output dir {out_dir} already holds {state}; pass --overwrite to replace it")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="posttrain-filter-") as tmp:
        inp = Input(config.input, config.on_bad_row)
        out = run_filters(config, inp, chain, tmp)
        seconds = time.perf_counter() - started

        artifacts.prepare_output(config.output, overwrite=config.overwrite, resume=False)
        staging = artifacts.atomic_dir(config.output)
        report = write_outputs(staging, config, out, inp, seconds, chain)
        del out, inp  # they map files in tmp
    artifacts.write_manifest(
        staging,
        stage="filter",
        config=dataclasses.asdict(config),
        inputs={"input": {"path": config.input, **_input_hash(config.input)}},
        extra={
            "outputs": {"clean": CLEAN, "rejects": REJECTS, "report": REPORT},
            "counts": {k: report[k] for k in ("rows_in", "rows_kept", "rows_dropped")},
        },
    )
    artifacts.mark_done(staging)
    final = artifacts.publish_dir(staging, config.output)
    _print_summary(report, final)
    return str(final)


def _input_hash(path: str) -> dict:
    p = Path(path)
    return {"sha256": artifacts.file_sha256(p)} if p.is_file() else {"sha256": artifacts.dir_sha256(p)}


def _write_rows(f, array, rows) -> None:
    """Write the strings at sorted positions `rows` of an Arrow (chunked) string array back to back, each
    run of consecutive positions as one slice of the array's data buffer: no Python object per row."""
    import numpy as np
    import pyarrow as pa

    base = 0
    for chunk in getattr(array, "chunks", [array]):
        local = rows[(rows >= base) & (rows < base + len(chunk))] - base
        base += len(chunk)
        if not len(local):
            continue
        wide = pa.types.is_large_string(chunk.type) or pa.types.is_large_binary(chunk.type)
        offsets = np.frombuffer(chunk.buffers()[1], np.int64 if wide else np.int32)
        offsets = offsets[chunk.offset : chunk.offset + len(chunk) + 1]
        data = memoryview(chunk.buffers()[2]) if chunk.buffers()[2] is not None else b""
        breaks = np.flatnonzero(np.diff(local) != 1)  # runs of consecutive rows: local[first[i]..last[i]]
        first, last = (
            np.concatenate([[0], breaks + 1]).tolist(),
            np.concatenate([breaks, [len(local) - 1]]).tolist(),
        )
        for start, end in zip(first, last):
            f.write(data[offsets[local[start]] : offsets[local[end] + 1]])


def _new_stats() -> dict:
    return {"dropped": 0, "redacted_rows": 0, "spans": Counter(), "examples": []}


def _tally(
    per_filter: dict, reasons: list[dict], action: str, culprit: str, row: dict, row_id: str, examples: int
) -> None:
    """Count one dropped or redacted row into the stats of every filter that gave a reason for it."""
    for name in dict.fromkeys(x["filter"] for x in reasons):
        stats = per_filter.setdefault(name, _new_stats())
        if action == "dropped" and name == culprit:
            stats["dropped"] += 1
        elif action == "redacted":
            stats["redacted_rows"] += 1
        for x in reasons:
            if x["filter"] == name:
                # counted by kind: "near duplicate", not "near duplicate of row 17 (jaccard~0.9)"
                stats["spans"][x.get("type") or re.split(r" \(| of row ", x["reason"])[0]] += 1
        if len(stats["examples"]) < examples:
            x = next(x for x in reasons if x["filter"] == name)
            stats["examples"].append(_example(x, row, row_id, action))


def _report(
    config: Config, inp: Input, out: Results, per_filter: dict, counts: dict, seconds: float, chain
) -> dict:
    import pyarrow.compute as pc

    n_in = inp.rows
    nbytes = pc.sum(out.table.column("_nbytes")).as_py() or 0
    report = {
        "input": config.input,
        "filters": config.filters,
        "rows_in": n_in,
        **counts,
        "per_filter": {k: {**v, "spans": dict(v["spans"])} for k, v in per_filter.items()},
        "engine": "ray" if (config.ray_address or config.use_ray) else "datasets",
        "seconds": round(seconds, 3),
        "megabytes": round(nbytes / 1e6, 3),
        "mb_per_s": round(nbytes / 1e6 / seconds, 3) if seconds else None,
        "rows_per_s": round(n_in / seconds, 1) if seconds else None,
    }
    for name, _, info in chain:
        if info.get("_stats"):
            report["per_filter"][name]["eval_sets"] = info["_stats"]
    assert counts["rows_kept"] + counts["rows_dropped"] == n_in, "row accounting broke"
    return report


def write_outputs(out_dir: Path, config: Config, out: Results, inp: Input, seconds: float, chain) -> dict:
    """clean.jsonl, rejects.jsonl (every dropped, redacted or unreadable row, in input order), report.json/.md."""
    import numpy as np

    per_filter = {name: _new_stats() for name, _, _ in chain}
    per_filter["input"] = _new_stats()
    good = np.asarray([why is None for why in out.bad], bool)
    kept_rows = np.flatnonzero(out.keep & good)
    with open(out_dir / CLEAN, "wb") as clean:
        _write_rows(clean, out.table.column("_out"), kept_rows)
    kept = len(kept_rows)
    dropped = int(good.sum()) - kept
    redacted = 0
    bad = list(inp.bad)
    rejects = []  # (row, JSON text)
    lines = inp.table.column("_line")
    todo = sorted(
        set(np.flatnonzero(~good).tolist()) | set(out.dedup) | {i for i, x in enumerate(out.reasons) if x != "[]"}
    )
    picked = np.asarray(todo, np.int64)  # the rows rejects.jsonl gets: their JSON lines in one take each
    outs, datas = (dict(zip(todo, out.table.column(c).take(picked).to_pylist())) for c in ("_out", "_data"))
    for r in todo:
        row = out.row[r]
        if out.bad[r] is not None:
            why, line = out.bad[r], lines[r].as_py()
            data = line.rstrip("\n") if why.startswith("invalid JSON") else json.loads(line)
            bad.append(_bad_record(row, inp.source(row), why, data))
            continue
        reasons = out.reasons_of(r)
        by = [x["filter"] for x in reasons]
        action = "redacted" if out.keep[r] else "dropped"
        redacted += action == "redacted"
        culprit = by[-1] if action == "dropped" else ",".join(dict.fromkeys(by))
        data = datas[r] or outs[r].rstrip("\n")  # JSON text, as json.dumps writes it
        rejects.append(
            (
                row,
                f'{{"row": {row}, "id": {_json_str(out.ids[r])}, "source": {_json_str(inp.source(row))}, '
                f'"action": "{action}", "filter": {_json_str(culprit)}, "reasons": {out.reasons_json(r)}, '
                f'"data": {data}}}',
            )
        )
        _tally(per_filter, reasons, action, culprit, json.loads(outs[r]), out.ids[r], config.examples)
    bad.sort(key=lambda x: x["row"])
    rejects += [(b["row"], json.dumps(b, ensure_ascii=False, default=str)) for b in bad]
    rejects.sort(key=lambda x: x[0])
    per_filter["input"]["dropped"] = len(bad)
    for b in bad[: config.examples]:
        per_filter["input"]["examples"].append({"source": b["source"], "reason": b["reasons"][0]["reason"]})
    with open(out_dir / REJECTS, "w", encoding="utf-8") as f:
        f.writelines(text + "\n" for _, text in rejects)
    counts = {"rows_kept": kept, "rows_dropped": dropped + len(bad), "rows_redacted": redacted}
    report = _report(config, inp, out, per_filter, counts, seconds, chain)
    artifacts.atomic_write_text(out_dir / REPORT, json.dumps(report, indent=2, ensure_ascii=False))
    artifacts.atomic_write_text(out_dir / "report.md", _markdown(report))
    return report


def _example(reason: dict, row: dict, row_id: str, action: str) -> dict:
    """A report example: the reason and the (redacted) turn around the span; no raw PII in the report."""
    ex = {"id": row_id, "action": action, "reason": reason["reason"]}
    if reason.get("turn") is not None and reason["filter"] != "pii":
        text = row["messages"][reason["turn"]]["content"]
        start, end = reason["span"]
        ex["excerpt"] = text[max(0, start - 60) : end + 60]
    elif reason.get("turn") is not None:
        ex["excerpt"] = row["messages"][reason["turn"]]["content"][:200]
    return ex


def _markdown(report: dict) -> str:
    lines = [
        f"# posttrain filter report: {report['input']}",
        "",
        f"{report['rows_in']} rows in, {report['rows_kept']} kept ({report['rows_redacted']} redacted), "
        f"{report['rows_dropped']} dropped; {report['megabytes']} MB in {report['seconds']} s "
        f"({report['mb_per_s']} MB/s, {report['engine']}).",
        "",
        "| filter | dropped | redacted rows | findings |",
        "|---|---:|---:|---|",
    ]
    for name, s in report["per_filter"].items():
        spans = ", ".join(f"{k}: {v}" for k, v in sorted(s["spans"].items()))
        lines.append(f"| {name} | {s['dropped']} | {s['redacted_rows']} | {spans} |")
    for name, s in report["per_filter"].items():
        if s["examples"]:
            lines += ["", f"## {name}", ""]
            lines += [f"- `{json.dumps(e, ensure_ascii=False)[:300]}`" for e in s["examples"]]
    return "\n".join(lines) + "\n"


def _print_summary(report: dict, out: Path) -> None:
    print(
        f"[filter] {report['rows_in']} rows: {report['rows_kept']} kept ({report['rows_redacted']} redacted), "
        f"{report['rows_dropped']} dropped; {report['mb_per_s']} MB/s"
    )
    for name, s in report["per_filter"].items():
        print(f"[filter]   {name:10s} dropped {s['dropped']:6d}  redacted rows {s['redacted_rows']:6d}")
    print(f"[filter] clean data: {out / CLEAN}")
