"""The house's import rules (docs/ARCHITECTURE.md, "Import order"): no import cycle between any two modules,
counting the imports inside functions too; `rewards`, `sandboxes` and `data_filters` stand alone (never import
`posttrain`, and import without torch or Ray); every module imports in a fresh interpreter."""

import ast
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PACKAGES = ("posttrain", "rewards", "sandboxes", "data_filters")
STANDALONE = ("rewards", "sandboxes", "data_filters")
# not imported as modules: the optional Presidio engine, and the programs the sandbox runs
PROGRAMS = ("data_filters.pii_presidio", "sandboxes.zygote", "sandboxes.judge_server")
# posttrain's layers, as docs/ARCHITECTURE.md draws them: a module imports only from layers before its own
LAYERS = [
    ["errors"],
    ["config"],
    ["artifacts", "curves"],
    ["hooks"],
    ["data"],
    ["models", "cluster", "checkpoint"],
    ["merging", "bond", "kd", "rollout"],
    ["teacher", "scoring", "on_policy", "teacher_context"],
    ["distill", "warm", "rl", "evaluate", "filter"],
    ["warp"],
    ["demo_report"],
    ["demo"],
    ["cli"],
]


def modules() -> dict[str, ast.Module]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = ast.parse(path.read_text(), str(path))
    return out


def imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The house modules `name` imports anywhere in its file (module level or inside functions)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{name}: a relative import (the house uses absolute imports)"
            # `from posttrain import rl` imports the module posttrain.rl; `from rewards import load`, the package
            targets = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                for a in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a house module's parent, or not ours
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    trees = modules()
    return {name: imports(name, tree, set(trees)) for name, tree in trees.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_anywhere():
    found = cycles(graph())
    assert not found, f"import cycles (lazy imports included): {found}"


def test_standalone_packages_never_import_posttrain():
    edges = graph()
    bad = {
        m: sorted(t for t in targets if t.split(".")[0] == "posttrain")
        for m, targets in edges.items()
        if m.split(".")[0] in STANDALONE
    }
    assert not {m: t for m, t in bad.items() if t}


def test_posttrain_modules_import_only_lower_layers():
    rank = {f"posttrain.{m}": i for i, layer in enumerate(LAYERS) for m in layer}
    edges = {m: t for m, t in graph().items() if m.startswith("posttrain.")}
    assert set(edges) - {"posttrain.__main__"} <= set(rank), f"modules with no layer: {set(edges) - set(rank)}"
    upward = [
        (m, t)
        for m, targets in edges.items()
        for t in targets
        if t.startswith("posttrain.") and rank[t] >= rank.get(m, len(LAYERS))
    ]
    assert not upward, f"imports of the same or a higher layer: {upward}"


@pytest.mark.parametrize("package", STANDALONE)
def test_standalone_package_imports_without_torch_ray_or_posttrain(package):
    names = [m for m in modules() if m.split(".")[0] == package and m not in PROGRAMS]
    code = (
        "import importlib, json, sys\n"
        f"for m in {names!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert not loaded & {"torch", "ray", "posttrain", "transformers"}, sorted(
        loaded & {"torch", "ray", "posttrain"}
    )


def test_every_posttrain_module_imports_alone_in_a_fresh_interpreter():
    names = [m for m in modules() if m.split(".")[0] == "posttrain"]
    code = (
        "import importlib, subprocess, sys\n"
        f"bad = [m for m in {names!r} if subprocess.run([sys.executable, '-c', 'import ' + m]).returncode]\n"
        "print(bad)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout[-2000:] + proc.stderr[-2000:]
