"""``bench.run --only SECTION`` merges into the existing results: other sections keep their rows, raw
results, date and machine; every ratio row names its run's CPU ISA (old rows get it appended)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import run
from bench.run import Row

REPO = Path(__file__).resolve().parents[2]
AVX2 = {"cores": 2, "cpu": "AMD EPYC", "memory_gib": 23.5, "isa": ["avx", "avx2", "fma"], "avx512": False}
AVX512 = {**AVX2, "isa": ["avx", "avx2", "avx512f", "fma"], "avx512": True}

OLD_MD = """# Benchmark results

| figure | value | target | met? | command |
|---|---|---|---|---|
| train 513: MindSpore job (GRAPH) img/s (median, runs 0.162-0.171) | 0.167 |  |  | `python -m x` |
| train 513: ratio MindSpore / PyTorch eager | 0.89 | >= 1.0 | no | `same run, interleaved` |
| eval 513 (500x375): network, 1 scale, img/s | 0.409 |  |  | `python -m bench.pipeline_speed eval` |
| operator 8 workers: kubectl apply -> all pods exist | 0.58 s |  |  | `python -m bench.operator_speed` |
"""


def test_isa_names() -> None:
    assert run.isa_name(AVX2) == "AVX2 only" and run.isa_name(AVX512) == "AVX-512"
    assert run.isa_name({"isa": ["avx"], "avx512": False}) == "no AVX2"


def test_only_one_section_replaces_it_and_keeps_the_others_from_an_old_results_file() -> None:
    previous = {"machine": AVX2, "date": "2026-11-26T16:08:38Z", "train": {"x": 1}, "eval": {"old": 1}}
    previous["operator"] = {"y": 2}
    new_rows = [Row("eval 513 (500x375): stand-in net, img/s", "14.5", ">= 10", "yes", "cmd")]
    current = {
        "eval": {"raw": {"new": 1}, "rows": new_rows, "run": {"date": "2026-11-30", "machine": AVX512}}
    }
    merged = run.merge(previous, OLD_MD, current)
    assert list(merged["rows"]) == ["train", "eval", "operator"]  # section order, no empty sections
    assert merged["eval"] == {"new": 1} and merged["train"] == {"x": 1} and merged["operator"] == {"y": 2}
    assert [r["figure"] for r in merged["rows"]["eval"]] == ["eval 513 (500x375): stand-in net, img/s"]
    train = [r["figure"] for r in merged["rows"]["train"]]
    assert train[1] == "train 513: ratio MindSpore / PyTorch eager (AVX2 only)"  # the old run's ISA
    assert merged["runs"]["train"]["machine"] == AVX2 and merged["runs"]["eval"]["machine"] == AVX512
    # A second merge reads the stored rows (not the markdown) and does not append the ISA twice.
    again = run.merge(json.loads(json.dumps(merged)), "", {})
    assert again["rows"] == merged["rows"] and again["runs"] == merged["runs"]


def test_written_table_lists_each_sections_machine(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(run, "BENCH", tmp_path)
    current = {
        "memory": {
            "raw": {},
            "rows": [Row("memory 513: a", "1")],
            "run": {"date": "d2", "machine": AVX512, "note": "under load"},
        }
    }
    run.write_results(run.merge({"machine": AVX2, "date": "d1", "train": {}}, OLD_MD, current))
    text = (tmp_path / "RESULTS.md").read_text()
    assert "- train: d1; 2 cores, AMD EPYC" in text and "(AVX2 only)" in text
    assert "- memory: d2; " in text and "(AVX-512)" in text and "under load" in text
    assert run.parse_table(text)[-1] == Row("memory 513: a", "1", "", "", "")
    assert [row.figure for row in run.parse_table(text)][:2] == [
        "train 513: MindSpore job (GRAPH) img/s (median, runs 0.162-0.171)",
        "train 513: ratio MindSpore / PyTorch eager (AVX2 only)",
    ]


def test_the_checked_in_results_parse() -> None:
    rows = run.parse_table((REPO / "bench" / "RESULTS.md").read_text())
    assert len(rows) > 20 and all(run.section_of(row.figure) for row in rows)
