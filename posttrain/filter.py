"""`posttrain filter`: clean a chat dataset with data_filters; write clean rows, rejects and a report.

    posttrain filter --config configs/demo/filter.yaml [--input raw.jsonl --output runs/x] [pii='{action: drop}']

Reads jsonl / parquet / an HF datasets dir; rows need `messages` (a list of {role, content} with string
content). Bad rows are rejects with a reason (or, with on_bad_row=error, one error naming file:line).
The chain of pure batch filters runs under `datasets.map(batched=True, num_proc=N)` here, or as Ray Data
`map_batches` when `ray_address` (or `use_ray`) is set; dedup's keep-the-first decision is one pass in the
driver over the signatures the workers computed. Output dir:
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
import time
from collections import Counter
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
    filters: list[str] = doc(["safety", "identity", "decontam", "pii", "dedup"],
                             "filters in order (pii, safety, identity, dedup, decontam, or 'module:function'); "
                             "each sees the rows the earlier ones kept, with their redactions")
    pii: dict = doc({}, "PII options: action (redact|drop), actions {TYPE: drop}, types, roles, allow, phone_region")
    safety: dict = doc({}, "safety options: roles, categories, extra_patterns, classifier (module:fn or model dir), "
                           "threshold, unsafe_label")
    identity: dict = doc({}, "self-identification options: name, developers, roles, other_names, other_developers")
    dedup: dict = doc({}, "dedup options: exact, near, threshold (Jaccard), num_perm, shingle, roles")
    decontam: dict = doc({}, "decontamination options: eval_files, n (13), roles, fields, min_words")
    on_bad_row: str = doc("reject", "a row that is not JSON, lacks messages or has non-string content: "
                                    "'reject' (to rejects.jsonl with the reason) or 'error' (stop)")
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
    """(source, row or None, raw text or error) for each input row of a parquet file or an HF datasets dir."""
    if path.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:  # not a save_to_disk dir
            raise UserError(f"input dir {path} is not an HF datasets dir (save_to_disk): {e}") from None
        if isinstance(ds, datasets.DatasetDict):
            raise UserError(f"input {path} holds splits {list(ds)}; point input at one split's dir")
        for i, row in enumerate(ds):
            yield f"{path}[{i}]", row, None
    else:
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}[{i}]", row, None


class Input:
    """The input rows as JSON text, for the workers: `cols` = {"_row": index, "_line": JSON}, plus where each
    row came from and the reject records of rows the driver already knows are bad (parquet/HF inputs;
    a jsonl line is parsed and checked by the workers, which is most of the reading work)."""

    def __init__(self, path: str, on_bad_row: str):
        self.path = Path(path)
        if not self.path.exists():
            raise UserError(f"input not found: {self.path}")
        self.cols: dict[str, list] = {"_row": [], "_line": []}
        self.bad: list[dict] = []
        self.lineno: list[int] = []  # jsonl: the line of each row
        self.jsonl = not (self.path.is_dir() or self.path.suffix == ".parquet")
        if self.jsonl:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        self.cols["_row"].append(len(self.lineno))
                        self.cols["_line"].append(line)
                        self.lineno.append(lineno)
            self.rows = len(self.lineno)
            return
        self.rows = 0
        for source, row, _ in _iter_input(self.path):
            reason = _check_row(row)
            if reason is not None:
                if on_bad_row == "error":
                    raise UserError(f"{source}: {reason}")
                self.bad.append(_bad_record(self.rows, source, reason, row))
            else:
                self.cols["_row"].append(self.rows)
                self.cols["_line"].append(json.dumps(row, ensure_ascii=False, default=str))
            self.rows += 1

    def source(self, row: int) -> str:
        return f"{self.path}:{self.lineno[row]}" if self.jsonl else f"{self.path}[{row}]"


def _bad_record(row: int, source: str, reason: str, data) -> dict:
    return {"row": row, "source": source, "action": "dropped", "filter": "input",
            "reasons": [{"filter": "input", "reason": reason}], "data": data}


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
    out["messages"] = [{**m, **{k: v for k, v in x.items() if k not in ("role", "content")}}
                       for m, x in zip(messages, row["messages"])]
    return out


# --------------------------------------------------------------------------------------------- running
COLUMNS = {"_row": "int64", "_keep": "bool", "_reasons": "string", "_bad": "string", "_id": "string",
           "_nbytes": "int64", "_out": "string", "_dedup_hash": "string", "_dedup_minhash": "binary"}


def filter_lines(rows: list[int], lines: list[str], chain) -> dict[str, list]:
    """The worker's part, for rows given as JSON text: parse and check them, run the chain, and serialise.

    Per row: `_keep`; `_reasons` (JSON list of reasons); `_bad` (why the row cannot be filtered, or None);
    `_id`; `_nbytes` (bytes of message text); `_out` (the row with the filters' rewrites as the JSON line
    clean.jsonl gets if it is kept); dedup's signatures when dedup is in the chain.
    """
    from data_filters import run_chain

    n = len(lines)
    parsed = [_parse(line) for line in lines]
    good = [k for k in range(n) if parsed[k][0] is not None]
    originals = [parsed[k][0] for k in good]
    ids = [str(row.get("id", f"#{rows[k]}")) for k, row in zip(good, originals)]
    messages = [[{"role": m["role"], "content": m["content"]} for m in row["messages"]] for row in originals]
    res = run_chain(chain, {"_row": [rows[k] for k in good], "_id": ids, "messages": messages})
    out = {"_row": list(rows), "_keep": [False] * n, "_reasons": ["[]"] * n, "_bad": [p[1] for p in parsed],
           "_id": [None] * n, "_nbytes": [0] * n, "_out": [None] * n}
    extra = [c for c in ("_dedup_hash", "_dedup_minhash") if c in res]
    for c in extra:
        out[c] = [None] * n
    for j, k in enumerate(good):
        out["_keep"][k] = res["_keep"][j]
        out["_reasons"][k] = res["_reasons"][j]
        out["_id"][k] = ids[j]
        out["_nbytes"][k] = sum(len(m["content"].encode()) for m in messages[j])
        out["_out"][k] = json.dumps(_restore(originals[j], res["messages"][j]), ensure_ascii=False)
        for c in extra:
            out[c][k] = res[c][j]
    return out


def _map_fn(batch, chain):
    return filter_lines(batch["_row"], batch["_line"], chain)


def run_local(cols: dict, chain, batch_size: int, num_proc: int) -> dict:
    import datasets

    n = len(cols["_row"])
    ds = datasets.Dataset.from_dict(cols)
    procs = num_proc or os.cpu_count() or 1
    procs = max(1, min(procs, n // batch_size))  # a process per batch at least, or the fork costs more
    with_dedup = any(name == "dedup" for name, _, _ in chain)
    names = [c for c in COLUMNS if with_dedup or not c.startswith("_dedup")]
    features = datasets.Features({c: datasets.Value(COLUMNS[c]) for c in names})
    out = ds.map(_map_fn, batched=True, batch_size=batch_size, num_proc=procs if procs > 1 else None,
                 fn_kwargs={"chain": chain}, remove_columns=list(cols), features=features,
                 new_fingerprint=f"filter-{time.time_ns()}", keep_in_memory=True, desc="filtering")
    return out.to_dict()


def _ray_fn(table, chain):
    import pyarrow as pa

    out = filter_lines(table.column("_row").to_pylist(), table.column("_line").to_pylist(), chain)
    # Fixed types, so blocks concatenate even when a block's column is all empty or all None.
    return pa.Table.from_pydict(out, schema=pa.schema([pa.field(name, pa.type_for_alias(COLUMNS[name])) for name in out]))


def run_ray(cols: dict, chain, batch_size: int, address: str | None) -> dict:
    import pyarrow as pa

    from posttrain import cluster

    ray = cluster.init(address)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ds = ray.data.from_arrow(pa.Table.from_pydict(cols))
    out = ds.map_batches(_ray_fn, batch_size=batch_size, batch_format="pyarrow", fn_kwargs={"chain": chain})
    tables = [t for t in ray.get(out.to_arrow_refs()) if t.num_rows]
    table = pa.concat_tables(tables, promote_options="permissive")
    result = table.to_pydict()
    order = sorted(range(len(result["_row"])), key=result["_row"].__getitem__)
    return {k: [v[i] for i in order] for k, v in result.items()}


def run_filters(config: Config, inp: Input, chain) -> dict:
    """The chain over every row, local or on Ray, then dedup's global pass; columns in input order."""
    cols = inp.cols
    if not cols["_row"]:
        out = {name: [] for name in COLUMNS}
    elif config.ray_address or config.use_ray:
        out = run_ray(cols, chain, config.batch_size, config.ray_address)
    else:
        out = run_local(cols, chain, config.batch_size, config.num_proc)
    first_bad = next((r for r, why in zip(out["_row"], out["_bad"]) if why), None)
    if first_bad is not None and config.on_bad_row == "error":
        raise UserError(f"{inp.source(first_bad)}: {out['_bad'][out['_row'].index(first_bad)]}")
    dedup = next((fn for name, fn, _ in chain if name == "dedup"), None)
    if dedup is not None and out["_row"]:
        from data_filters import dedup as dd

        res = dd.decide(out["_dedup_hash"], out["_dedup_minhash"], out["_keep"], out["_id"], **dedup.keywords)
        for r, (k, reasons) in enumerate(zip(res.keep, res.reasons)):
            if not k:
                out["_keep"][r] = False
                out["_reasons"][r] = json.dumps(json.loads(out["_reasons"][r]) + reasons, ensure_ascii=False)
    return out


# --------------------------------------------------------------------------------------------- writing
def run(config: Config) -> str:
    from data_filters import FILTERS, build_chain

    if config.on_bad_row not in ("reject", "error"):
        raise UserError(f"on_bad_row must be 'reject' or 'error', got {config.on_bad_row!r}")
    if config.batch_size < 1:
        raise UserError("batch_size must be >= 1")
    options = {name: getattr(config, name) for name in FILTERS if getattr(config, name)}
    chain = build_chain(config.filters, options)  # all config errors surface before any output is touched
    out_dir = Path(config.output)
    if out_dir.exists() and any(out_dir.iterdir()) and not config.overwrite:  # say so before the work
        state = "a finished run" if artifacts.is_done(out_dir) else "an unfinished run"
        raise UserError(f"output dir {out_dir} already holds {state}; pass --overwrite to replace it")
    started = time.perf_counter()
    inp = Input(config.input, config.on_bad_row)
    out = run_filters(config, inp, chain)
    seconds = time.perf_counter() - started

    artifacts.prepare_output(config.output, overwrite=config.overwrite, resume=False)
    staging = artifacts.atomic_dir(config.output)
    report = write_outputs(staging, config, out, inp, seconds, chain)
    artifacts.write_manifest(staging, stage="filter", config=dataclasses.asdict(config),
                             inputs={"input": {"path": config.input, **_input_hash(config.input)}},
                             extra={"outputs": {"clean": CLEAN, "rejects": REJECTS, "report": REPORT},
                                    "counts": {k: report[k] for k in ("rows_in", "rows_kept", "rows_dropped")}})
    artifacts.mark_done(staging)
    final = artifacts.publish_dir(staging, config.output)
    _print_summary(report, final)
    return str(final)


def _input_hash(path: str) -> dict:
    p = Path(path)
    return {"sha256": artifacts.file_sha256(p)} if p.is_file() else {"sha256": artifacts.dir_sha256(p)}


def _original(line: str) -> dict:
    """The input row as the rejects file shows it: messages' role and content first."""
    row = json.loads(line)
    return _restore(row, [{"role": m["role"], "content": m["content"]} for m in row["messages"]])


def write_outputs(out_dir: Path, config: Config, out: dict, inp: Input, seconds: float, chain) -> dict:
    per_filter = {name: {"dropped": 0, "redacted_rows": 0, "spans": Counter(), "examples": []}
                  for name, _, _ in chain}
    per_filter["input"] = {"dropped": 0, "redacted_rows": 0, "spans": Counter(), "examples": []}
    kept = dropped = redacted = 0
    rejects = list(inp.bad)
    lines = inp.cols["_line"]
    with open(out_dir / CLEAN, "w", encoding="utf-8") as clean:
        chunk = []
        for r in range(len(out["_row"])):
            if out["_bad"][r] is not None:
                why, line = out["_bad"][r], lines[r]
                data = line.rstrip("\n") if why.startswith("invalid JSON") else json.loads(line)
                rejects.append(_bad_record(out["_row"][r], inp.source(out["_row"][r]), why, data))
                continue
            if out["_keep"][r]:
                kept += 1
                chunk.append(out["_out"][r])
                if len(chunk) >= 4096:
                    clean.write("\n".join(chunk) + "\n")
                    chunk = []
            else:
                dropped += 1
            if out["_reasons"][r] == "[]":
                continue
            reasons = json.loads(out["_reasons"][r])
            by = [x["filter"] for x in reasons]
            action = "redacted" if out["_keep"][r] else "dropped"
            redacted += out["_keep"][r]
            culprit = by[-1] if action == "dropped" else ",".join(dict.fromkeys(by))
            rejects.append({"row": out["_row"][r], "id": out["_id"][r], "source": inp.source(out["_row"][r]),
                            "action": action, "filter": culprit, "reasons": reasons, "data": _original(lines[r])})
            for name in dict.fromkeys(by):
                stats = per_filter.setdefault(name, {"dropped": 0, "redacted_rows": 0, "spans": Counter(),
                                                     "examples": []})
                if action == "dropped" and name == culprit:
                    stats["dropped"] += 1
                elif action == "redacted":
                    stats["redacted_rows"] += 1
                for x in reasons:
                    if x["filter"] == name:
                        # counted by kind: "near duplicate", not "near duplicate of row 17 (jaccard~0.9)"
                        stats["spans"][x.get("type") or re.split(r" \(| of row ", x["reason"])[0]] += 1
                if len(stats["examples"]) < config.examples:
                    x = next(x for x in reasons if x["filter"] == name)
                    stats["examples"].append(_example(x, json.loads(out["_out"][r]), out["_id"][r], action))
        if chunk:
            clean.write("\n".join(chunk) + "\n")
    bad = [b for b in rejects if b["filter"] == "input"]
    per_filter["input"]["dropped"] = len(bad)
    rejects.sort(key=lambda x: x["row"])
    for b in sorted(bad, key=lambda x: x["row"])[:config.examples]:
        per_filter["input"]["examples"].append({"source": b["source"], "reason": b["reasons"][0]["reason"]})
    with open(out_dir / REJECTS, "w", encoding="utf-8") as f:
        for rec in rejects:
            f.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
    n_in = inp.rows
    nbytes = sum(out["_nbytes"])
    report = {
        "input": config.input, "filters": config.filters,
        "rows_in": n_in, "rows_kept": kept, "rows_dropped": dropped + len(bad), "rows_redacted": redacted,
        "per_filter": {k: {**v, "spans": dict(v["spans"])} for k, v in per_filter.items()},
        "engine": "ray" if (config.ray_address or config.use_ray) else "datasets",
        "seconds": round(seconds, 3), "megabytes": round(nbytes / 1e6, 3),
        "mb_per_s": round(nbytes / 1e6 / seconds, 3) if seconds else None,
        "rows_per_s": round(n_in / seconds, 1) if seconds else None,
    }
    for name, _, info in chain:
        if info.get("_stats"):
            report["per_filter"][name]["eval_sets"] = info["_stats"]
    assert kept + dropped + len(bad) == n_in, "row accounting broke"
    artifacts.atomic_write_text(out_dir / REPORT, json.dumps(report, indent=2, ensure_ascii=False))
    artifacts.atomic_write_text(out_dir / "report.md", _markdown(report))
    return report


def _example(reason: dict, row: dict, row_id: str, action: str) -> dict:
    """A report example: the reason and the (redacted) turn around the span; no raw PII in the report."""
    ex = {"id": row_id, "action": action, "reason": reason["reason"]}
    if reason.get("turn") is not None and reason["filter"] != "pii":
        text = row["messages"][reason["turn"]]["content"]
        start, end = reason["span"]
        ex["excerpt"] = text[max(0, start - 60):end + 60]
    elif reason.get("turn") is not None:
        ex["excerpt"] = row["messages"][reason["turn"]]["content"][:200]
    return ex


def _markdown(report: dict) -> str:
    lines = [f"# posttrain filter report: {report['input']}", "",
             f"{report['rows_in']} rows in, {report['rows_kept']} kept ({report['rows_redacted']} redacted), "
             f"{report['rows_dropped']} dropped; {report['megabytes']} MB in {report['seconds']} s "
             f"({report['mb_per_s']} MB/s, {report['engine']}).", "",
             "| filter | dropped | redacted rows | findings |", "|---|---:|---:|---|"]
    for name, s in report["per_filter"].items():
        spans = ", ".join(f"{k}: {v}" for k, v in sorted(s["spans"].items()))
        lines.append(f"| {name} | {s['dropped']} | {s['redacted_rows']} | {spans} |")
    for name, s in report["per_filter"].items():
        if s["examples"]:
            lines += ["", f"## {name}", ""]
            lines += [f"- `{json.dumps(e, ensure_ascii=False)[:300]}`" for e in s["examples"]]
    return "\n".join(lines) + "\n"


def _print_summary(report: dict, out: Path) -> None:
    print(f"[filter] {report['rows_in']} rows: {report['rows_kept']} kept ({report['rows_redacted']} redacted), "
          f"{report['rows_dropped']} dropped; {report['mb_per_s']} MB/s")
    for name, s in report["per_filter"].items():
        print(f"[filter]   {name:10s} dropped {s['dropped']:6d}  redacted rows {s['redacted_rows']:6d}")
    print(f"[filter] clean data: {out / CLEAN}")
