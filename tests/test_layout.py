"""The repository's shape: the top level holds the commands a user types, the
rest lives in packages, no package imports a command, no module imports itself
back through others (counting imports inside functions, which still run), and
an import inside a function is rare and says why."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {"preprocess", "train", "generator", "evaluate", "attributes", "bench", "bench_quality", "app", "projector"}  # python X.py
TOP_LEVEL = SCRIPTS | {"dataloader", "network", "network_128"}  # the design's files a reader opens first
PACKAGES = {"training", "metrics", "benchmarks", "preprocessing", "editing", "utils", "export", "explorer"}
MAX_LAZY_IMPORTS = 10  # project imports inside functions, each for an optional dependency or a torch-free fast path


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for the top-level scripts and the packages (tests, docs and notebooks left out)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in ("tests", "docs", "notebooks") or any(part.startswith(".") for part in rel.parts):
            continue
        parts = rel.with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict) -> set[str]:
    """The project modules ``name`` imports anywhere in its file. A package's
    own __init__ is not counted from inside the package (it is already running)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b runs a, then a.b
                module = ".".join(parts[:i])
                inside = name == module or name.startswith(module + ".")
                if module in modules and module != name and not inside:
                    found.add(module)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = project_modules(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan), each sorted."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_planted_circle(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "a.py").write_text("def f():\n    from pkg import b\n")  # a lazy import counts
    (tmp_path / "pkg" / "b.py").write_text("import a\nfrom . import c\n")
    (tmp_path / "pkg" / "c.py").write_text("from pkg.b import x\n")
    graph = import_graph(tmp_path)
    assert graph["a"] == {"pkg", "pkg.b"} and graph["pkg.b"] == {"a", "pkg.c"}
    assert cycles(graph) == [["a", "pkg.b", "pkg.c"]]


def test_the_top_level_holds_the_commands_and_the_packages():
    top = {p.stem for p in ROOT.glob("*.py")}
    assert top == TOP_LEVEL, f"top-level modules that belong in a package: {sorted(top - TOP_LEVEL)}"
    for name in SCRIPTS:
        text = (ROOT / f"{name}.py").read_text()
        assert "main(" in text and '__name__ == "__main__"' in text, f"{name}.py is not a command"
    assert {p.parent.name for p in ROOT.glob("*/__init__.py")} == PACKAGES


def package_command_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(package module, command) for every package module that imports a command."""
    return sorted((name, target) for name, targets in graph.items() if name.split(".")[0] not in TOP_LEVEL
                  for target in targets if target in SCRIPTS)


def lazy_imports(root: Path = ROOT) -> list[tuple[str, int, str, bool]]:
    """(file, line, module, has a reason) for each project import inside a function.
    The reason is a comment on the import's line or on the line just above it."""
    modules = project_modules(root)
    tops = {name.split(".")[0] for name in modules}
    found = []
    for name, path in modules.items():
        lines = path.read_text().splitlines()
        for function in ast.walk(ast.parse("\n".join(lines), str(path))):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    targets = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    targets = ["." if node.level else node.module or ""]
                else:
                    continue
                for target in targets:
                    if target == "." or target.split(".")[0] in tops:
                        here, above = lines[node.lineno - 1], lines[node.lineno - 2].strip()
                        reason = "#" in here or above.startswith("#")
                        found.append((str(path.relative_to(root)), node.lineno, target, reason))
    return sorted(set(found))


def test_no_package_imports_a_command():
    assert package_command_imports(import_graph()) == []


def test_a_planted_package_to_command_import_is_found(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "__init__.py").write_text("")
    (tmp_path / "preprocess.py").write_text("def main():\n    pass\n")
    (tmp_path / "metrics" / "features.py").write_text("def f():\n    import preprocess\n")
    (tmp_path / "network.py").write_text("import preprocess\n")  # a top-level file may use a command
    assert package_command_imports(import_graph(tmp_path)) == [("metrics.features", "preprocess")]


def test_imports_inside_functions_are_few_and_say_why():
    found = lazy_imports()
    unexplained = [f"{path}:{line} {module}" for path, line, module, reason in found if not reason]
    assert not unexplained, f"imports inside functions need a one-line reason comment: {unexplained}"
    assert len(found) <= MAX_LAZY_IMPORTS, f"{len(found)} imports inside functions: " + \
        ", ".join(f"{path}:{line} {module}" for path, line, module, _ in found)


def test_the_lazy_import_finder_reads_reasons(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text(
        "def f():\n    # torch-free fast path\n    from pkg import b\n"
        "def g():\n    from . import b  # optional dependency\n"
        "def h():\n    import pkg.b\n    import json\n")
    (tmp_path / "pkg" / "b.py").write_text("")
    assert lazy_imports(tmp_path) == [("pkg/a.py", 3, "pkg", True), ("pkg/a.py", 5, ".", True),
                                      ("pkg/a.py", 7, "pkg.b", False)]


def unlisted_modules(readme: str, root: Path = ROOT) -> list[str]:
    """Package modules the README's layout table does not name: a row names
    ``pkg/x.py`` outright, or as ``x.py`` in a row that names ``pkg/`` first."""
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    missing = []
    for path in sorted(root.glob("*/*.py")):
        package, file = path.parent.name, path.name
        if package not in PACKAGES or file == "__init__.py":
            continue
        named = any(f"`{package}/{file}`" in row or (f"`{package}/" in row.split("|")[1] and f"`{file}`" in row)
                    for row in rows)
        if not named:
            missing.append(f"{package}/{file}")
    return missing


def test_the_readme_layout_table_lists_every_package_module():
    assert unlisted_modules((ROOT / "README.md").read_text()) == []


def test_an_unlisted_module_is_found(tmp_path):
    for package in ("utils", "metrics"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    for name in ("utils/cli.py", "utils/files.py", "metrics/fid.py", "metrics/new.py"):
        (tmp_path / name).write_text("")
    readme = "| `utils/cli.py`, `files.py` | errors, files |\n| `metrics/fid.py` | FID |\n"
    assert unlisted_modules(readme, tmp_path) == ["metrics/new.py"]
