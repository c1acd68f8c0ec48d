"""Privileged context for the teacher: its prompt holds what the student never sees (TRL's SDFT, on-policy
self-distillation), so one model can teach itself a skill it applies only with help, and the embedded default
has a teacher that knows the task although no instruction-tuned teacher ships offline.

    teacher_context:
      template: reference     # text put before the first user turn's content, on the teacher's side only:
                              # `reference` = "A correct answer: {reference}\n\n"; any other text may name the
                              # row's columns ({answer}) and {reference}, the row's own (last) assistant turn
      exemplars: 3            # k other training rows, solved, as earlier turns (never the row itself)
      exemplars_from: task    # optional: only rows with the row's own value of this column (math for math)

Alignment. The student's sequence is S = [BOS] + H + rest, H = `<start_of_turn>user\n`, and the teacher's is
T = [BOS] + E + H + C + rest, E the exemplars' turns and C the rendered template, spliced as token ids (each
piece encoded alone, as posttrain.data encodes every turn piece): so T[p + offset] = S[p] for every position p
after H, offset = |E| + |C|, and the teacher's target for the student's position p is read at p + offset.
"""

from __future__ import annotations

import dataclasses
import random
import string

from posttrain.config import doc
from posttrain.errors import UserError

REFERENCE = "A correct answer: {reference}\n\n"


@dataclasses.dataclass
class TeacherContext:
    template: str | None = doc(
        None,
        "text before the first user turn on the teacher's side: 'reference' "
        '("A correct answer: {reference}\\n\\n") or text naming the row\'s columns and '
        "{reference}; None = no text",
    )
    exemplars: int = doc(0, "k other training rows, solved, as earlier turns of the teacher's prompt")
    exemplars_from: str | None = doc(
        None,
        "draw the exemplars only from rows with the same value of this column (e.g. task; rows without it "
        "are one group); None = any row",
    )


def active(section: TeacherContext) -> bool:
    return bool(section.template) or section.exemplars > 0


def _template(section: TeacherContext) -> str:
    return REFERENCE if section.template == "reference" else (section.template or "")


def check(section: TeacherContext, rows: list[dict], what: str) -> None:
    """Every field the template names exists in every row; 0 <= exemplars < rows (a row is never its own),
    within the row's group when `exemplars_from` names a column."""
    if section.exemplars < 0 or section.exemplars > len(rows) - 1:
        raise UserError(
            f"teacher_context.exemplars={section.exemplars} needs at least {section.exemplars + 1} rows "
            f"in {what} (it has {len(rows)}; a row is never its own exemplar)"
        )
    if section.exemplars_from:
        if not any(section.exemplars_from in row for row in rows):
            raise UserError(
                f"teacher_context.exemplars_from names '{section.exemplars_from}', which no row of {what} has"
            )
        sizes: dict = {}
        for g in groups(rows, section):
            sizes[g] = sizes.get(g, 0) + 1
        small = {g: n for g, n in sizes.items() if n <= section.exemplars}
        if small:
            raise UserError(
                f"teacher_context.exemplars={section.exemplars} with exemplars_from="
                f"{section.exemplars_from}: {what} has too few rows with {section.exemplars_from} = "
                + ", ".join(f"{g!r} ({n})" for g, n in sorted(small.items(), key=str))
            )
    fields = {name for _, name, _, _ in string.Formatter().parse(_template(section)) if name}
    for row in rows:
        missing = sorted(f for f in fields if f != "reference" and f not in row)
        if missing:
            raise UserError(
                f"{row.get('_where', what)}: teacher_context.template names {missing}, which the row "
                f"lacks (its columns: {sorted(k for k in row if not k.startswith('_'))})"
            )
        if "reference" in fields and reference(row) is None:
            raise UserError(
                f"{row.get('_where', what)}: teacher_context.template names {{reference}} but the row "
                "has no assistant turn"
            )


def groups(rows: list[dict], section: TeacherContext) -> list | None:
    """Each row's exemplar group (its `exemplars_from` value, as text; the rows without one form a group of
    their own), or None when any row may serve."""
    if not section.exemplars_from:
        return None
    return [str(r.get(section.exemplars_from)) for r in rows]


def reference(row: dict) -> str | None:
    """The row's own (last) assistant turn."""
    replies = [m["content"] for m in row.get("messages", []) if m["role"] in ("assistant", "model")]
    return replies[-1] if replies else None


def render(section: TeacherContext, row: dict) -> str:
    columns = {k: v for k, v in row.items() if not k.startswith("_")}
    return _template(section).format(**{**columns, "reference": reference(row)})


def exemplar_rows(n_rows: int, k: int, seed: int, group: list | None = None) -> list[list[int]]:
    """For every row, k distinct other rows (of its own group when `group` gives each row's), drawn by a
    generator seeded by (seed, row)."""
    members: dict = {}
    for i in range(n_rows):
        members.setdefault(None if group is None else group[i], []).append(i)
    out = []
    for i in range(n_rows):
        rng = random.Random(seed * 1_000_003 + i)
        pool = [j for j in members[None if group is None else group[i]] if j != i]
        out.append(rng.sample(pool, k) if k else [])
    return out


def teacher_ids(
    tokenizer, student_ids: list[int], row: dict, section: TeacherContext, exemplars: list[dict]
) -> tuple[list[int], int]:
    """(the teacher's token ids for the student's sequence `student_ids`, the offset of every position after the
    first user turn's header). `exemplars` are the other rows whose messages become earlier turns."""
    from posttrain import data

    head = data.encode_text(tokenizer, f"{data.START_OF_TURN}user\n")
    if student_ids[1 : 1 + len(head)] != head:
        raise UserError(
            f"{row.get('_where', '?')}: teacher_context needs the row to start with a user (or system) turn"
        )
    before = []
    for ex in exemplars:
        ids, _ = data.tokenize_chat(tokenizer, ex["messages"], max_length=1 << 30)
        before += ids[1:]  # its turns, without its BOS
    text = render(section, row)
    context = data.encode_text(tokenizer, text) if text else []
    ids = student_ids[:1] + before + head + context + student_ids[1 + len(head) :]
    return ids, len(before) + len(context)
