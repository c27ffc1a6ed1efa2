"""The library stays readable top to bottom: no function over 60 lines (issue: one experiment, one definition), and
its packages are layered: data and report below the engine and the sections, the plan, profile and CLI on top
(a job's typed spec, `kdbench/spec.py`, sits at the bottom, where every layer may read it; its validation against the
registries is the engine's: engine/config.py)."""
import ast

from workflow_helpers import REPO

# package -> the kdbench packages and top-level modules it may import (besides itself)
MAY_IMPORT = {
    "data": {"records", "registry", "spec"},
    "report": {"records"},
    "engine": {"data", "records", "registry", "spec"},
    "sections": {"data", "engine", "report", "records", "registry", "layout", "spec"},
}
# modules every layer may import: the spec imports no other kdbench module, records and registry only the spec
BOTTOM = {"spec": set(), "records": {"spec"}, "registry": {"spec"}}


def _library_files():
    return sorted((REPO / "kdbench").rglob("*.py"))


def test_no_function_in_the_library_is_over_60_lines():
    long = []
    for path in _library_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def kdbench_imports(path) -> set[str]:
    """The first part below `kdbench.` of every kdbench module that `path` imports (at any depth of the file)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "kdbench":
            parts = node.module.split(".")
            out |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("kdbench.")}
    return out


def test_each_package_imports_only_the_layers_below_it():
    wrong = []
    for pkg, allowed in MAY_IMPORT.items():
        for path in sorted((REPO / "kdbench" / pkg).glob("*.py")):
            bad = kdbench_imports(path) - allowed - {pkg, "__version__"}
            if bad:
                wrong.append(f"{path.relative_to(REPO)} imports {sorted(bad)}")
    for name, allowed in BOTTOM.items():
        if kdbench_imports(REPO / "kdbench" / f"{name}.py") - allowed - {"__version__"}:
            wrong.append(f"kdbench/{name}.py imports {sorted(kdbench_imports(REPO / 'kdbench' / f'{name}.py'))}")
    assert not wrong, wrong


def deferred_imports(path) -> list[tuple[int, str]]:
    """(line, text) of every import statement inside a function of `path`."""
    lines = path.read_text().splitlines()
    return sorted({(s.lineno, lines[s.lineno - 1].strip()) for f in ast.walk(ast.parse(path.read_text()))
                   if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for s in ast.walk(f) if isinstance(s, (ast.Import, ast.ImportFrom))})


def test_imports_sit_at_the_top_and_each_deferred_one_says_why():
    """An import inside a function hides what a module depends on (and hid an import loop before): at most 15 in
    the library, each with its reason in a `# deferred:` comment on its line."""
    found = [(path.relative_to(REPO), *hit) for path in _library_files() for hit in deferred_imports(path)]
    assert len(found) <= 15, found
    assert not [f for f in found if "# deferred:" not in f[2]], found


def test_the_deferred_import_reader_sees_an_import_in_a_function(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\n\ndef f():\n    import json  # deferred: why\n    class C:\n        def g(self):\n"
                 "            from kdbench import plan\n")
    assert deferred_imports(f) == [(4, "import json  # deferred: why"), (7, "from kdbench import plan")]


def test_the_import_reader_sees_a_forbidden_import(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from kdbench.sections import mnist\n    from kdbench import plan, layout\n")
    assert kdbench_imports(f) == {"sections", "plan", "layout"}


def test_every_registered_section_has_what_the_plan_cli_and_workflow_ask_of_it():
    """The section registry's contract (kdbench.sections): the built-ins are this package's modules with an ORDER,
    in that order; each has jobs, outputs, summary flag, write, and an aggregate rule (in its own rule file, or made
    by sections.smk); the CLI dispatches to the same modules."""
    from kdbench import commands, sections
    assert sections.names()[:4] == ["mnist", "variants", "ensembles", "specialists"]
    for name in sections.names():
        module = commands.section_module(name)
        assert module.__name__ == f"kdbench.sections.{name}" and callable(module.write), name
        assert callable(module.jobs) and isinstance(module.OUTPUTS, list) and isinstance(module.SUMMARY, bool), name
        rules = REPO / "workflow" / "rules" / f"{name}.smk"
        assert not rules.exists() or f"rule aggregate_{name}" in rules.read_text(), name
