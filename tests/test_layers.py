"""The layers of the repository, read off its folders: a module imports only its own layer or
the ones below, and no chain of imports comes back to where it started. Function-level imports
count too (the walk reads every import statement of every file)."""
import ast
from pathlib import Path

from tests.conftest import REPO

# bottom to top; a name is a top-level module or package of the repository
LAYERS = (
    ("helpers",),                                # primitives: FFT maths, seeds, devices, images,
                                                 # tiling, pairs CSV, metrics, synthetic rain
    ("representations",),                        # how a pair becomes tensors, and statistics
    ("diffusion", "losses", "modules"),          # the levers: processes, losses, networks
    ("utils", "sampling", "checkpoint"),         # data loading, deraining, checkpoints
    ("training",),                               # the training script's pieces
    ("ddpm_conditional", "derain", "ablate", "bench", "bench_sampling", "make_figures",
     "get_fft_statistics", "get_fft_statistics_log", "preprocess_csv", "tools"),  # commands
)
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def project_modules(root=REPO):
    """{dotted module name: path} of the repository's own code (tests and environments aside)."""
    found = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if rel.parts[0] in ("tests", ".venv", ".ci-venv", "data", "runs") or \
                rel.parts[0].startswith("."):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports_of(name, path, modules):
    """The project modules `name` imports, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package upwards
                up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            # `from pkg import sub` imports the submodule when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # a.b.c -> the longest project module prefix
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def import_graph(root=REPO):
    modules = project_modules(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer_violations(graph):
    bad = []
    for name, deps in graph.items():
        here = LAYER_OF.get(name.split(".")[0])
        if here is None:
            bad.append(f"{name}: in no layer (add it to LAYERS)")
            continue
        for dep in deps:
            there = LAYER_OF[dep.split(".")[0]]
            if there > here:
                bad.append(f"{name} (layer {here}) imports {dep} (layer {there})")
    return bad


def cycles(graph):
    """Every import cycle, as a list of modules (depth-first search)."""
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                found.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = "done"
    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_every_import_goes_down_or_sideways_and_none_comes_back():
    graph = import_graph()
    assert "helpers.tiling" in graph and "training.parts" in graph  # the walk sees the tree
    assert "helpers.tiling" in graph["sampling"] and "helpers.tiling" in graph["utils"]
    assert layer_violations(graph) == []
    assert cycles(graph) == []


def test_the_checks_fail_on_an_upward_import_and_on_a_cycle(tmp_path):
    # the two checks on a small tree that breaks both rules
    (tmp_path / "helpers").mkdir()
    (tmp_path / "helpers" / "__init__.py").write_text("")
    (tmp_path / "helpers" / "a.py").write_text("def f():\n    import sampling\n")
    (tmp_path / "sampling.py").write_text("from helpers import a\n")
    (tmp_path / "diffusion.py").write_text("import losses\n")
    (tmp_path / "losses.py").write_text("from diffusion import x\n")
    graph = import_graph(tmp_path)
    assert layer_violations(graph) == ["helpers.a (layer 0) imports sampling (layer 3)"]
    assert sorted(map(tuple, cycles(graph))) == [("diffusion", "losses", "diffusion"),
                                                 ("helpers.a", "sampling", "helpers.a")]
