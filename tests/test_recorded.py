"""Numbers in the docs come from recorded runs: every marker in the README, docs/ and the config headers matches its
results/NAME.json, recorded under the code's ruler; a planted stale number, an older ruler and a wrong CITATION.cff
version are each found; `write` repairs what `check` finds; recording a real chain and a real study keeps their
numbers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import REPO

from imgcollapse import recorded
from imgcollapse._version import __version__
from imgcollapse.metric_facts import RULER_VERSION


def test_the_docs_quote_their_recorded_results() -> None:
    assert recorded.problems(REPO) == []
    names = {q.name for p in recorded.doc_paths(REPO) for q in recorded.quotes(p)}
    # the README's chain and claims (the GMM's, until the DDPM's and the commands' times are retaken under ruler 5:
    # docs/RESULTS.md lists them as older)
    assert {"default_chain", "claims_gmm", "study_null"} <= {n for name in names for n in name.split("+")}
    older = (REPO / "docs" / "RESULTS.md").read_text()
    assert "the commands' times" in older and '"The old plan"' in older


def test_every_preset_header_that_states_a_measurement_quotes_a_result_or_is_listed_as_older() -> None:
    older = (REPO / "docs" / "RESULTS.md").read_text()
    for path in sorted((REPO / "imgcollapse" / "conf" / "experiment").glob("*.yaml")):
        text = path.read_text()
        if "Measured" in text and "<!--r " not in text:
            assert f"`{path.name}`" in older, f"{path.name} states a measurement without a recorded result"


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of what the check reads: results/, README.md, docs/, the configs' headers, CITATION.cff."""
    for name in ("results", "docs", "imgcollapse/conf"):
        shutil.copytree(REPO / name, tmp_path / name)
    for name in ("README.md", "CITATION.cff"):
        shutil.copy(REPO / name, tmp_path / name)
    return tmp_path


def test_a_planted_stale_number_is_found_and_write_repairs_it(checkout: Path) -> None:
    readme = checkout / "README.md"
    quote = next(q for q in recorded.quotes(readme) if q.name == "default_chain" and "\n" not in q.text)
    text = readme.read_text()
    readme.write_text(text[:quote.start] + "99.9" + text[quote.end:])
    found = recorded.problems(checkout)
    assert len(found) == 1 and f"<!--r default_chain {quote.key}-->" in found[0] and "'99.9'" in found[0]
    assert recorded.write_docs(checkout) == [readme]
    assert recorded.problems(checkout) == [] and readme.read_text() == text


def test_a_marker_markdown_would_not_render_is_found(checkout: Path) -> None:
    readme = checkout / "README.md"
    numbers = recorded.load_results(checkout)["default_chain"]["numbers"]
    recall, fid = (recorded.number_text(numbers[k]) for k in ("gen.0.recall", "gen.0.fid"))  # the right values
    readme.write_text(readme.read_text() + f"\nrecall\n<!--r default_chain gen.0.recall-->{recall}<!--/r--> at first\n"
                      f"\n```\nfid <!--r default_chain gen.0.fid-->{fid}<!--/r-->\n```\n")
    found = recorded.problems(checkout)
    assert len(found) == 2 and "start of a line" in found[0] and "inside a code block" in found[1]


def test_a_result_of_an_older_ruler_is_stale(checkout: Path) -> None:
    path = checkout / "results" / "default_chain.json"
    result = json.loads(path.read_text())
    path.write_text(json.dumps({**result, "ruler": RULER_VERSION - 1}))
    found = recorded.problems(checkout)
    stale = [line for line in found if "results/default_chain.json was recorded under ruler" in line]
    quoted = [q for p in recorded.doc_paths(checkout) for q in recorded.quotes(p) if q.name == "default_chain"]
    assert len(stale) == len(quoted) > 10  # every quote of it, in the README and the preset header
    # the only other line: docs/RESULTS.md's index, which shows the result's ruler
    assert [line for line in found if line not in stale] == [line for line in found if "docs/RESULTS.md" in line
                                                              and "all index" in line]


def test_citation_carries_the_package_version(checkout: Path) -> None:
    citation = checkout / "CITATION.cff"
    citation.write_text(citation.read_text().replace(f"version: {__version__}", "version: 0.0.1"))
    assert recorded.problems(checkout) == [f"CITATION.cff: version 0.0.1, the package's is {__version__}: "
                                           "python -m imgcollapse.recorded write"]
    recorded.write_docs(checkout)
    assert recorded.problems(checkout) == []


def test_markers_that_do_not_pair_up_are_refused(checkout: Path) -> None:
    readme = checkout / "README.md"
    text = readme.read_text()
    readme.write_text(text + "\nFID <!--r default_chain gen.0.fid-->8.69 unclosed, then\nrecall "
                      "<!--r default_chain gen.0.recall-->0.940<!--/r-->\n")
    found = recorded.problems(checkout)
    assert len(found) == 1 and "not closed before the next" in found[0]
    with pytest.raises(recorded.UserError, match="marker"):
        recorded.write_docs(checkout)
    assert readme.read_text().endswith("<!--/r-->\n")  # nothing written


@pytest.mark.parametrize(("value", "fmt", "text"), [
    (8.5245, None, "8.52"), (71.54, None, "71.5"), (0.0893, None, "0.0893"), (4510.7, None, "4,510"),
    (0.09996, None, "0.100"), (999.7, None, "1,000"), (float("nan"), "min", "—"), (3.36e9, "gb", "3.4 GB"),
    (-0.0654, None, "−0.0654"), (0, None, "0"), (4510.7, "min", "75 min 11 s"), (24.0, "min", "24 s"),
    (0.05, "pct", "5%"), (1400, "int", "1,400"), ("supported", None, "supported"),
])
def test_numbers_are_written_as_the_docs_print_them(value: object, fmt: str | None, text: str) -> None:
    assert recorded.number_text(value, fmt) == text


@pytest.mark.slow
def test_recording_a_real_chain_and_study_keeps_their_numbers(shared_study: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import csv

    monkeypatch.setattr(recorded, "ROOT", tmp_path)  # results/ of this test only
    study = tmp_path / "study"
    shutil.copytree(shared_study, study)
    chain = study / "replace" / "seed_0"
    result = recorded.record_run("chain", chain, command="imgcollapse debug=smoke")
    rows = list(csv.DictReader((chain / "metrics.csv").open()))
    assert result["ruler"] == RULER_VERSION and result["version"] == __version__
    assert result["numbers"]["gen.1.recall"] == pytest.approx(float(rows[1]["recall"]))
    assert result["numbers"]["generations"] == len(rows) == 2
    table = result["tables"]["table"].splitlines()
    assert table[2].startswith("| real floor |") and table[4].startswith("| 1 | ")
    assert json.loads((tmp_path / "results" / "chain.json").read_text()) == result

    found = recorded.record_study("study", study, label="smoke")
    claims = json.loads((study / "claims.json").read_text())["claims"]
    assert {f"claim.{k}.verdict": c["verdict"] for k, c in claims.items()} == \
        {k: v for k, v in found["numbers"].items() if k.endswith(".verdict")}
    assert found["numbers"]["seeds"] == 2 and "| claim | verdict (level) | why" in found["tables"]["summary"]
    both = recorded.verdicts_table([found, {**found, "label": "again"}]).splitlines()
    assert both[0] == ("| claim | smoke (n = 2 seeds, generations 0..1) | again (n = 2 seeds, generations 0..1) |")
    assert len(both) == 2 + len(claims)
    # a two-sided claim's verdict keeps the word of its direction in the table across models
    numbers = {"seeds": 3, "generation": 2, "claim.open.verdict": "differs", "claim.open.direction": "faster",
               "claim.x.verdict": "inconclusive"}
    two = {"name": "q", "label": "q", "numbers": numbers, "statements": {"open": "Open?", "x": "X"}}
    assert recorded.verdicts_table([two]).splitlines()[2:] == ["| Open? | **differs** (faster) |",
                                                             "| X | inconclusive |"]
