"""The evaluation records under docs/records/ and the documents that cite them agree.

The model cards quote numbers from these files and docs/records/README.md indexes them by hand; these
tests keep the index and the citations honest when records are added or renamed.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECORDS = ROOT / "docs" / "records"

pytestmark = pytest.mark.skipif(not RECORDS.is_dir(), reason="docs/records/ is not in this checkout")


def _cells(line: str) -> list[str]:
    """The cells of a Markdown table row."""
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _index_rows() -> dict[str, list[str]]:
    """File name → the cells of its row in the README's SAM table (file, checkpoint, top-1, oracle, box, NoC@85)."""
    rows = {}
    for line in (RECORDS / "README.md").read_text(encoding="utf-8").splitlines():
        cells = _cells(line)
        if len(cells) == 6:
            m = re.fullmatch(r"\**`([\w.]+\.json)`\**", cells[0])
            if m:
                rows[m.group(1)] = cells
    return rows


def _summary(name: str) -> dict:
    return json.loads((RECORDS / name).read_text(encoding="utf-8"))["summary"]


def _rounds_to(quoted: float, actual: float, decimals: int) -> bool:
    """Whether ``quoted`` is ``actual`` written with ``decimals`` decimals."""
    return abs(quoted - actual) <= 0.5 * 10.0 ** -decimals + 1e-9


def test_every_sam_record_is_indexed_with_its_own_numbers():
    rows = _index_rows()
    files = sorted(p.name for p in RECORDS.glob("default_model_*eval.json"))
    assert files, "no SAM records found"
    missing = [f for f in files if f not in rows]
    assert not missing, f"docs/records/README.md has no row for {missing}"
    stale = [f for f in rows if not (RECORDS / f).is_file()]
    assert not stale, f"docs/records/README.md indexes files that do not exist: {stale}"
    for name in files:
        summary = _summary(name)
        quoted = [float(c) for c in rows[name][2:]]
        actual = [summary["miou/point_top1"], summary["miou/point_oracle"], summary["miou/box"], summary["noc@85"]]
        for q, a, decimals, what in zip(quoted, actual, (3, 3, 3, 1), ("top-1", "oracle", "box", "NoC@85")):
            assert _rounds_to(q, a, decimals), f"{name}: README says {what} {q}, the record has {a:.4f}"


def test_records_cited_in_the_docs_exist():
    cited = set()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        # a one-letter name is a placeholder ("docs/records/X.json, X as named")
        cited |= {(doc.name, m) for m in re.findall(r"docs/records/([\w.]{2,}\.json)", text)}
    assert cited, "no citations found"
    missing = sorted((doc, name) for doc, name in cited if not (RECORDS / name).is_file())
    assert not missing, f"cited records that do not exist: {missing}"


# The card's "At a glance" columns, left to right: the bundled file's record on each held-out split.
GLANCE_RECORDS = ("default_model_eval.json", "default_model_confirm_eval.json", "default_model_confirm2_eval.json")


def test_bundled_records_head_the_model_card():
    """The bundled file's records (one per held-out split) are the numbers of the card's "At a glance" table."""
    card = (ROOT / "docs" / "default_model.md").read_text(encoding="utf-8")
    glance = card[card.index("## At a glance"):card.index("## Architecture")]
    rows = {cells[0]: cells[1:1 + len(GLANCE_RECORDS)] for cells in map(_cells, glance.splitlines())}
    quoted_as = {  # row label → (summary key, decimals) for each number of its cells, in order
        "1-point mIoU, top-1 / oracle of 3": (("miou/point_top1", 3), ("miou/point_oracle", 3)),
        "box mIoU (GrabCut on the same boxes)": (("miou/box", 3), ("miou/grabcut_box", 3)),
        "NoC@85 / NoC@90 (max 20)": (("noc@85", 1), ("noc@90", 1)),
    }
    for column, name in enumerate(GLANCE_RECORDS):
        summary = _summary(name)
        for label, keys in quoted_as.items():
            quoted = [float(x) for x in re.findall(r"\d+\.\d+", rows[label][column])]
            assert len(quoted) == len(keys), f"At a glance, {label!r}, column {column + 1}: {rows[label][column]!r}"
            for q, (key, decimals) in zip(quoted, keys):
                assert _rounds_to(q, summary[key], decimals), \
                    f"{name}: the card says {key} {q}, the record has {summary[key]:.4f}"


_UNITS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
         "seventeen eighteen nineteen".split()
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}


def _number(words: str) -> int:
    """An English number under 100 ("Thirty-one") as an int."""
    head, _, tail = words.lower().partition("-")
    if head in _TENS:
        return _TENS[head] + (_UNITS.index(tail) if tail else 0)
    return _UNITS.index(head)


def test_model_card_counts_its_training_commands():
    """The card's "Training" section says how many commands rebuild the bundled file; keep the count true."""
    card = (ROOT / "docs" / "default_model.md").read_text(encoding="utf-8")
    m = re.search(r"^([A-Z][a-z]+(?:-[a-z]+)?) committed commands:\n+```bash\n(.*?)```", card, re.M | re.S)
    assert m, "the model card's 'N committed commands:' block is missing"
    commands = [line for line in m.group(2).splitlines() if line.startswith("promptseg ")]
    assert _number(m.group(1)) == len(commands), f"the card says {m.group(1)} commands, the block has {len(commands)}"
