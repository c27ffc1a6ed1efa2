"""The library stays readable top to bottom: no function over 60 lines (issue: one experiment, one definition)."""
import ast

from workflow_helpers import REPO


def test_no_function_in_the_library_is_over_60_lines():
    long = []
    for path in sorted((REPO / "kdbench").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long
