"""The scale benchmark's report says which figures a resumed run did not measure."""

import copy
import json
from pathlib import Path

from bench.scale import notes, tables

RESULTS = Path(__file__).resolve().parents[2] / "bench_results" / "scale.json"


def test_a_resumed_run_marks_the_stages_it_took_from_the_run_that_did_them():
    measured = json.loads(RESULTS.read_text())["results"]
    for stage in measured["stages"].values():
        stage.pop("from_earlier_run", None)
        stage.pop("note", None)
    resumed = copy.deepcopy(measured)
    first = next(iter(resumed["stages"]))
    resumed["stages"][first]["from_earlier_run"] = True

    assert notes(measured) is None
    assert "(earlier run)" in notes(resumed)
    names = [row[0] for row in tables(resumed)[0]["rows"]]
    assert names[1] == f"{first} (earlier run)"
    assert [row[0] for row in tables(measured)[0]["rows"]][1] == first
    assert sum("(earlier run)" in name for name in names) == 1
    # the figures themselves are the same either way
    assert [row[1:] for row in tables(resumed)[0]["rows"]] == \
        [row[1:] for row in tables(measured)[0]["rows"]]


def test_a_note_kept_with_a_stage_is_reported_with_it():
    measured = json.loads(RESULTS.read_text())["results"]
    for stage in measured["stages"].values():
        stage.pop("from_earlier_run", None)
        stage.pop("note", None)
    last = list(measured["stages"])[-1]
    measured["stages"][last]["note"] = "promoted by hand"
    assert notes(measured) == f"*{last}*: promoted by hand"
    measured["stages"][last]["from_earlier_run"] = True
    said = notes(measured).split("\n\n")
    assert "(earlier run)" in said[0] and said[1] == f"*{last}*: promoted by hand"
