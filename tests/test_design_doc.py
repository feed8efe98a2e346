"""The design contracts the code cites live in the repository (docs/design.md)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_cited_contract_is_in_docs_design_md():
    design = (ROOT / "docs" / "design.md").read_text()
    numbered = {int(n) for n in re.findall(r"^(\d+)\. ", design.split("## Contracts", 1)[1], re.M)}
    assert numbered >= set(range(1, 12))
    cited: set[int] = set()
    sources = [*ROOT.glob("sgcore/**/*.py"), *ROOT.glob("jobs/*.py"), *ROOT.glob("tests/**/*.py"),
               *ROOT.glob("docs/*.md")]
    for path in sources:
        text = path.read_text()
        assert "DESIGN.md" not in text or path.name == "test_design_doc.py", f"{path} cites a file not in the repo"
        for m in re.finditer(r"design\.md contracts? ([\d ,and]+)", text):
            cited |= {int(n) for n in re.findall(r"\d+", m.group(1))}
    assert cited, "nothing cites docs/design.md"
    assert cited <= numbered, f"cited contracts missing from docs/design.md: {sorted(cited - numbered)}"
