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


def _index_rows() -> dict[str, list[str]]:
    """File name → the cells of its row in the README's SAM table (file, checkpoint, top-1, oracle, box, NoC@85)."""
    rows = {}
    for line in (RECORDS / "README.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
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


def test_bundled_record_is_the_bundled_models():
    """default_model_eval.json is the record of the bundled file: its numbers head the model card."""
    summary = _summary("default_model_eval.json")
    card = (ROOT / "docs" / "default_model.md").read_text(encoding="utf-8")
    glance = card[card.index("## At a glance"):card.index("## Architecture")]
    row = next(line for line in glance.splitlines() if line.startswith("| 1-point mIoU"))
    top1, oracle = (float(x) for x in re.findall(r"\d\.\d{3}", row)[:2])
    assert _rounds_to(top1, summary["miou/point_top1"], 3)
    assert _rounds_to(oracle, summary["miou/point_oracle"], 3)
    row = next(line for line in glance.splitlines() if line.startswith("| box mIoU"))
    box = float(re.findall(r"\d\.\d{3}", row)[0])
    assert _rounds_to(box, summary["miou/box"], 3)
