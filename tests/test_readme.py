"""Issue 35: the README's numbers about results come from the tables. Between `<!-- results` and `<!-- /results -->`
every number is a link to the table it states, `[text](results/<profile>/<table>.csv "row: col col ...")`: the
numbers of the text, in order, are those columns of that row, to the digits the text shows. A number outside a link
there is one of the paper's (or a bar, a temperature, a count of seeds, a table's name), never a result."""
import re
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r'\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\((results/[^ )]+\.csv) "([^"]+)"\)')
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
# numbers a results paragraph may hold outside a link: the paper's numbers, bars, settings, names
NOT_RESULTS = re.compile(r"paper(?:'s)?\s+\d+(?:\.\d+)?%?|(?:the )?\d+% bar|bar \d+%|T=\d+|Table \d|\d+ seeds|"
                         r"95% interval|\d+% of|\b3%|100%|10,000|on \d+|section \d|\d+s(?:-and-\d+s)?\b|\d+-\d+")


def results_text(text: str) -> str:
    """Every `<!-- results ... -->` ... `<!-- /results -->` block of the README, joined."""
    blocks = re.findall(r"<!-- results.*?-->(.*?)<!-- /results -->", text, re.S)
    assert blocks, "README: no <!-- results --> block"
    return "\n".join(blocks)


def claims(text: str) -> list[tuple[str, str, str, list[str]]]:
    """(link text, table file, row key, columns) of every linked claim."""
    out = []
    for m in LINK.finditer(text):
        key, _, cols = m.group(3).partition(":")
        out.append((m.group(1), m.group(2), key.strip(), cols.split()))
    return out


def table_row(table: Path, key: str) -> pd.Series:
    df = pd.read_csv(table)
    parts = key.split("/")
    if table.name.startswith("variants"):
        hit = df[(df.experiment == parts[0]) & (df.variant == parts[1])]
    else:  # summary: section/table/system/metric, the system may hold a slash (specialists)
        hit = df[(df.section == parts[0]) & (df.table == parts[1]) & (df.system == "/".join(parts[2:-1]))
                 & (df.metric == parts[-1])]
    assert len(hit) == 1, f"{table}: no single row {key!r}"
    return hit.iloc[0]


def mismatches(text: str, root: Path = REPO) -> list[str]:
    found = []
    for shown, table, key, cols in claims(text):
        numbers = NUMBER.findall(shown.replace("+-", " "))
        if len(numbers) != len(cols):
            found.append(f"{shown!r}: {len(numbers)} numbers for the columns {cols}")
            continue
        row = table_row(root / table, key)
        for number, col in zip(numbers, cols):
            digits = len(number.split(".")[1]) if "." in number else 0
            if abs(float(number) - float(row[col])) > 0.5 * 10 ** -digits + 1e-9:
                found.append(f"{shown!r}: {col} of {table} row {key!r} is {row[col]:g}, the README says {number}")
    return found


def test_every_linked_number_in_the_readme_is_its_table_rows():
    text = results_text((REPO / "README.md").read_text())
    assert len(claims(text)) >= 20
    assert mismatches(text) == []


def test_no_result_in_the_readme_is_stated_outside_a_link():
    text = results_text((REPO / "README.md").read_text())
    bare = NOT_RESULTS.sub(" ", LINK.sub(" ", text))
    bare = re.sub(r"`[^`]*`", " ", bare)  # names (`speech_narrow`, `hinton`)
    assert NUMBER.findall(bare) == [], bare


@pytest.mark.parametrize("edit", [
    ("80.9 +- 17.0%", "90.9 +- 17.0%"),   # a share
    ("[-3.75, -2.77]", "[-3.75, -1.77]"),  # a variant's interval
    ("(`hinton`)", "(`hinton`) and 97 errors"),  # a result outside a link
])
def test_a_changed_readme_number_fails(edit):
    text = results_text((REPO / "README.md").read_text())
    old, new = edit
    assert old in text
    changed = text.replace(old, new, 1)
    bare = NOT_RESULTS.sub(" ", LINK.sub(" ", changed))
    bare = re.sub(r"`[^`]*`", " ", bare)
    assert mismatches(changed) or NUMBER.findall(bare)
