"""docs/BENCHMARKS.md's generated tables come from the committed result files, and --check says when not."""

from __future__ import annotations

import json

import pytest

from benchmarks import report


def test_a_block_is_rendered_from_its_results_and_a_stale_one_is_caught(tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    record = {"command": "python -m benchmarks.chat_threads", "machine": {"cpu": "Some CPU", "cores": 2},
              "sleep_threads": 1, "tokens": 64, "repeats": 3,
              "rows": [{"condition": "quiet", "threads": 1, "decode_tok_s": 70.5, "first_token_s": 0.2,
                        "load_before": 0.1}]}
    (results / "chat_threads.json").write_text(json.dumps(record))
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# B\n\n<!-- generated: chat_threads -->\n| stale |\n<!-- /generated -->\n\nafter\n")
    monkeypatch.setattr(report, "RESULTS", results)
    monkeypatch.setattr(report, "DOC", doc)
    assert report.main(["--check"]) == 1
    assert report.main([]) == 0
    text = doc.read_text()
    assert "| quiet | 1 | 70.5 | 0.2 | 0.1 |" in text and "stale" not in text and text.endswith("after\n")
    assert report.main(["--check"]) == 0


def test_a_block_without_results_is_an_error(tmp_path, monkeypatch):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("<!-- generated: kill_nights -->\n<!-- /generated -->\n")
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    monkeypatch.setattr(report, "DOC", doc)
    with pytest.raises(SystemExit, match="kill_nights.json, which is missing"):
        report.main(["--check"])
