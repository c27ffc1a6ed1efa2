"""Lint is part of the test command: ruff (configured in pyproject.toml) finds nothing in the package, tests and
benchmarks, and `snakemake --lint` finds nothing that is not justified by a `# lint:` comment in the rule it names."""
import re
import shutil
import subprocess
import sys

import pytest
from workflow_helpers import REPO, SMOKE


def test_ruff_finds_nothing():
    if shutil.which("ruff") is None:
        pytest.fail("ruff is not installed: `pip install -e '.[test]'` installs it")
    r = subprocess.run(["ruff", "check", "--no-cache", "kdbench", "tests", "benchmarks"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def lint_findings(text: str) -> list[tuple[str, str, int, str]]:
    """(rule or snakefile, file, line, finding) for each finding of `snakemake --lint`'s text output."""
    out, where = [], None
    for line in text.splitlines():
        head = re.match(r"Lints for (?:rule (\w+) \(line (\d+), (.+)\)|snakefile (.+)):$", line)
        if head:
            rule, lineno, path, snakefile = head.groups()
            where = (rule or "", path or snakefile, int(lineno or 0))
        elif where and (item := re.match(r"    \* (.+?):?$", line)):
            out.append((*where, item.group(1)))
    return out


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def rule_notes(lines: list[str], name: str, lineno: int = 0) -> str:
    """The `# lint:` comments inside rule `name` (its lines up to the next line indented no deeper than its head); a
    `use rule P as NAME` also carries P's. Found by name: snakemake's line numbers for `use rule` are unreliable; a
    rule named by its `name:` directive (made in a loop, train.smk) is found at its line `lineno`, a `rule:` head."""
    head = re.compile(rf"\s*(?:(?:rule|checkpoint) {name}:|use rule (\w+) as {name}\b|rule:)")
    named = [i for i, line in enumerate(lines) if head.match(line) and not line.strip().startswith("rule:")]
    unnamed = [lineno - 1] if 0 < lineno <= len(lines) and lines[lineno - 1].strip() == "rule:" else []
    start = (named or unnamed)[0]
    depth = _indent(lines[start])
    end = next((i for i in range(start + 1, len(lines)) if lines[i].strip() and _indent(lines[i]) <= depth), len(lines))
    notes = " ".join(line.split("# lint:", 1)[1] for line in lines[start:end] if "# lint:" in line)
    parent = head.match(lines[start]).group(1)
    return notes + (" " + rule_notes(lines, parent) if parent else "")


def justified(rule: str, path: str, lineno: int, finding: str) -> bool:
    """A finding stands only where the rule's own text carries a `# lint:` comment naming what it allows (the
    conda finding, which every rule gets alike: one `# lint: conda` comment in the Snakefile)."""
    if "conda environment" in finding:
        return "# lint: conda" in (REPO / "Snakefile").read_text()
    if not rule:
        return False
    notes = rule_notes(open(path).read().splitlines(), rule, lineno)
    used = re.match(r"Shell command directly uses variable (\w+)", finding)
    return bool(used) and bool(re.search(rf"\b{used.group(1)}\b", notes))


def test_snakemake_lint_is_clean_or_justified_beside_each_finding():
    r = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "--configfile", str(SMOKE)], cwd=REPO,
                       capture_output=True, text=True)
    text = r.stdout + r.stderr
    findings = lint_findings(text)
    if r.returncode != 0:
        assert findings, text[-3000:]  # it exits non-zero when it finds anything; then each finding must be read
    bad = [f for f in findings if not justified(*f)]
    assert not bad, "\n".join(f"{rule or path}: {finding}" for rule, path, _, finding in bad)


def test_a_justification_names_what_it_allows_and_reaches_a_use_rule():
    lines = ["rule train:", "    input: x", "    # lint: DATA stays out of params", "    shell: 'x {DATA}'", "",
             "if True:", "", "    use rule train as train_more with:", "        output: y",
             "rule other:", "    shell: 'y'"]
    assert "DATA" in rule_notes(lines, "train_more") and "DATA" in rule_notes(lines, "train")
    assert "lint" not in rule_notes(lines, "other") and rule_notes(lines, "other") == ""
    looped = ["for n in NAMES:", "", "    rule:", "        name: n", "        # lint: DATA stays out",
              "        shell: 'x'", "", "rule other:", "    shell: 'y'"]
    assert "DATA" in rule_notes(looped, "train_members", 3) and "DATA" not in rule_notes(looped, "other", 8)


def test_the_lint_parser_reads_snakemakes_output():
    text = ("Lints for snakefile /x/rules/common.smk:\n    * Mixed rules and functions in same snakefile.:\n"
            "      Small one-liner functions ...\n"
            "Lints for rule train (line 5, /x/rules/common.smk):\n    * No log directive defined:\n")
    assert lint_findings(text) == [("", "/x/rules/common.smk", 0, "Mixed rules and functions in same snakefile."),
                                   ("train", "/x/rules/common.smk", 5, "No log directive defined")]
