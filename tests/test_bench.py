"""`dreamer bench`: the days it writes, how it scores, its arms on the tiny model, resume, report, bad files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from dreamer.bench.data import load_user_days
from dreamer.bench.days import DISTRACTORS, IDK, POOLS, SLOTS, controls, make_days
from dreamer.bench.report import dreaming_lines, headline, markdown
from dreamer.bench.run import BenchConfig, BenchError, probes_after
from dreamer.bench.score import history_block, reply_names
from dreamer.cli.main import cli
from dreamer.eval.probes import KINDS


# --- the synthetic days -----------------------------------------------------------------
def pool_of(value: str) -> set[str]:
    return {name for name, values in POOLS.items() if value in values}


def test_days_are_seeded_and_day_one_does_not_depend_on_how_many():
    assert make_days(3, 3, 10) == make_days(3, 3, 10)
    assert make_days(3, 3, 10) != make_days(4, 3, 10)
    one, three = make_days(5, 1, 10)[0], make_days(5, 3, 10)[0]
    assert one["records"] == three["records"]
    assert [p["question"] for p in one["probes"]] == [p["question"] for p in three["probes"]]


def test_every_probe_is_well_formed_with_distractors_of_its_kind():
    days = make_days(0, 3, 10)
    kinds = set()
    answers = []
    for day in days:
        told = " ".join(m["content"] for r in day["records"] for m in r["messages"] if m["role"] == "user")
        for p in day["probes"]:
            kinds.add(p["kind"])
            assert p["kind"] in KINDS and p["day"] == day["day"]
            assert len(p["distractors"]) == DISTRACTORS == len(set(p["distractors"]))
            assert p["answer"] not in p["distractors"]
            if p["kind"] == "abstain":
                assert p["answer"] == IDK
                assert set.intersection(*(pool_of(d) for d in p["distractors"]))  # one pool
                continue
            assert p["answer"] in told, p  # the fact was said that day
            assert all(pool_of(d) & pool_of(p["answer"]) for d in p["distractors"]), p
            if p["kind"] in ("recall", "update"):
                answers.append(p["answer"])
    assert kinds == {"recall", "implication", "update", "abstain"}
    assert len(answers) == len(set(answers))  # no two facts share an answer


def test_updates_tell_a_new_value_the_old_one_loses_and_earlier_probes_are_superseded():
    days = with_ids(make_days(0, 3, 10))
    asked = {p["id"] for p in probes_after(days, 3, 0)}
    updates = [p for d in days for p in d["probes"] if p["kind"] == "update"]
    assert len(updates) == 4
    for update in updates:
        assert update["distractors"][0] == update["old"] != update["answer"]
        earlier = [p for d in days for p in d["probes"] if p["day"] < update["day"] and p["answer"] == update["old"]]
        assert earlier and all(p["superseded_on"] == update["day"] for p in earlier)
        assert not {p["id"] for p in earlier} & asked and update["id"] in asked


def with_ids(days: list[dict]) -> list[dict]:
    for k, day in enumerate(days):
        for i, probe in enumerate(day["probes"]):
            probe["id"] = f"{k + 1}:{i}"
    return days


def test_implications_ask_something_else_than_the_recall_question():
    for pool, tell, question, implication, update in SLOTS:
        assert implication != question and implication.endswith(("?", "."))
        assert update is None or "{v}" in update


def test_controls_use_the_days_own_answers_and_a_generic_question():
    day = make_days(1, 1, 10)[0]
    recall = [p for p in day["probes"] if p["kind"] == "recall"]
    checks = controls(day["probes"], 1)
    answers = {p["answer"] for p in recall}
    assert len(checks["inday"]) == len(recall)
    for p in checks["inday"]:
        assert set(p["distractors"]) <= answers - {p["answer"]}
    assert {p["question"] for p in checks["generic"]} == {"Tell me something."}


def test_too_many_facts_is_one_clear_error():
    with pytest.raises(ValueError, match="needs 92 kinds of facts; there are 78"):
        make_days(0, 3, 32)


# --- scoring ------------------------------------------------------------------------------
def test_a_reply_names_the_fact_only_without_hedging_and_abstains_in_words():
    probe = {"kind": "recall", "answer": "Lisbon", "distractors": ["Porto", "Lyon", "Ghent"]}
    assert reply_names("Your sister lives in lisbon.", probe)
    assert not reply_names("Lisbon or Porto, I think.", probe)
    assert not reply_names("She lives in Spain.", probe)
    organ = {"kind": "general", "answer": "the heart", "distractors": ["the liver", "the lungs", "the kidneys"]}
    assert reply_names("Heart.", organ) and not reply_names("The liver.", organ)
    legs = {"kind": "general", "answer": "eight", "distractors": ["six", "four", "ten"]}
    assert reply_names("A spider has 8 legs.", legs) and not reply_names("It has 18 legs.", legs)
    assert not reply_names("Eight or six.", legs)
    assert reply_names("Eight, as is often said.", legs) and reply_names("The answer is: 8.", legs)
    freezing = {"kind": "general", "answer": "zero", "distractors": ["fifty", "ten", "forty"]}
    assert not reply_names("It freezes at -18.0 degrees.", freezing) and reply_names("At 0 degrees.", freezing)  # "ten" inside "often" is not a distractor named
    idk = {"kind": "abstain", "answer": IDK, "distractors": ["Ana", "Noor", "Lars"]}
    assert reply_names("I'm sorry, you haven’t told me that.", idk)
    assert not reply_names("Her name is Ana.", idk)
    assert not reply_names("I don't know, maybe Ana?", idk)


def test_the_context_memory_is_every_day_in_order():
    days = make_days(0, 2, 4)
    text = history_block([r for d in days for r in d["records"]])
    assert text.index("03 March 2025") < text.index("04 March 2025")
    assert all(f"- User: {m['content']}" in text for d in days for r in d["records"] for m in r["messages"]
               if m["role"] == "user")


# --- a user's own set ---------------------------------------------------------------------
def write_lines(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


CONV = [{"day": "2025-06-09", "messages": [{"role": "user", "content": "My boss is Henrietta."}]},
        {"day": "2025-06-10", "messages": [{"role": "user", "content": "My new boss is Marcus."}]}]
PROBES = [{"day": "2025-06-09", "question": "Who is my boss?", "answer": "Henrietta", "distractors": ["Ann", "Bo"]},
          {"day": "2025-06-10", "kind": "update", "question": "Who is my boss?", "answer": "Marcus",
           "distractors": ["Henrietta", "Bo"]}]


def test_user_days_are_nights_in_date_order_and_an_update_supersedes(tmp_path):
    days = load_user_days(write_lines(tmp_path / "c.jsonl", CONV[::-1]), write_lines(tmp_path / "p.jsonl", PROBES))
    assert [d["day"] for d in days] == ["2025-06-09", "2025-06-10"]
    assert days[0]["probes"][0]["superseded_on"] == "2025-06-10"


@pytest.mark.parametrize("which, rows, message", [
    ("probes", PROBES[:1] + ["{not json"], "p.jsonl, line 2: invalid JSON"),
    ("probes", PROBES[:1] + [{**PROBES[0], "day": "2025-07-01"}], "line 2: day 2025-07-01 has no conversation"),
    ("probes", [{**PROBES[0], "kind": "trivia"}], "line 1: 'kind' must be one of"),
    ("data", CONV[:1] + [{"day": "2025-06-10", "messages": []}], "c.jsonl, line 2: 'messages' must be a non-empty"),
])
def test_bad_files_are_one_line_naming_the_line_and_nothing_runs(tmp_path, which, rows, message):
    conv = write_lines(tmp_path / "c.jsonl", rows if which == "data" else CONV)
    probes = write_lines(tmp_path / "p.jsonl", rows if which == "probes" else PROBES)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["bench", "--data", str(conv), "--probes", str(probes), "--out", str(out)],
                                env={"DREAMER_HOME": str(tmp_path / "home")})
    assert result.exit_code == 1
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_bad_options_are_refused():
    with pytest.raises(BenchError, match="unknown arm 'memgpt'"):
        BenchConfig(arms=["base", "memgpt"])
    with pytest.raises(BenchError, match="--data and --probes go together"):
        BenchConfig(data="x.jsonl")
    result = CliRunner().invoke(cli, ["bench", "--resume", "somewhere", "--days", "2"])
    assert result.exit_code == 1 and "drop --days" in result.output


# --- the whole pipeline on the tiny model ------------------------------------------------
def bench(tmp_path: Path, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "DREAMER_HOME": str(tmp_path / "home")}
    return subprocess.Popen([sys.executable, "-m", "dreamer", "bench", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, **kwargs)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    proc = bench(tmp, "--quick", "--out", str(tmp / "run"))
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output
    return tmp / "run", output


def test_quick_runs_every_arm_and_writes_the_report_and_plots(quick_run):
    folder, output = quick_run
    result = json.loads((folder / "bench.json").read_text())
    assert sorted(result["units"]) == sorted(f"{a}/{k}" for a in BenchConfig().arms for k in (1, 2))
    for name, unit in result["units"].items():
        arm = name.split("/")[0]
        rows = unit["score"]["probes"]
        assert {r["kind"] for r in rows} >= {"recall", "implication", "abstain", "general", "inday", "generic"}
        assert all(isinstance(r["mc"], bool) for r in rows)
        assert all(isinstance(r["gen"], bool) for r in rows if r["kind"] not in ("inday", "generic"))
        spent = max(r["memory_tokens"] for r in rows)
        assert (spent > 0) == (arm in ("context", "recall")), name
        if arm in ("naive", "distill"):
            assert unit["train"]["status"] == "trained" and all(Path(p).is_dir() for p in unit["train"]["experts"])
            assert len(unit["train"]["experts"]) == int(name[-1])  # the night's expert on top of the earlier ones
        if arm in ("sleep", "dream"):
            assert unit["train"]["status"] in ("promoted", "rejected")
            assert (unit["train"]["dreaming"] is None) == (arm == "sleep"), name  # only Dreaming differs
            assert unit["train"]["phases"]["distil into a new expert"] > 0
        if arm in ("sleep", "dream") and unit["train"]["status"] == "promoted":  # folded into the tiny twin,
            assert unit["served"]["folded"] and unit["served"]["adapters"] == 0  # which llama.cpp cannot chat with
            assert "could not load" in unit["served"]["error"]
        if arm == "dream":
            dreams = unit["train"]["dreaming"]
            assert "dream: write" in unit["train"]["phases"]
            # The tiny model's random tokens never read as "Question: ... Answer: ..." and its teacher
            # keeps few probes, so its nights dream nothing and say why (tests/test_dreaming.py runs
            # the stage past the writer).
            assert dreams["written"] == 0 and dreams["error"] in ("no dreams were written",
                                                                   "no held-out probes to score dreams on")
    context = result["units"]["context/2"]["score"]["probes"]
    recall = result["units"]["recall/2"]["score"]["probes"]
    assert max(r["memory_tokens"] for r in context) > max(r["memory_tokens"] for r in recall)
    assert (folder / "report.md").read_text().startswith("# dreamer bench")
    for name in ("kinds", "forgetting", "cost"):
        assert (folder / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "sleep ahead" in output
    report = (folder / "report.md").read_text()
    assert "Dreaming: `dream` against `sleep` (stage 1 alone) on 2 paired night(s)" in report
    assert "## What the chat serves after each night (deep sleep)" in report
    assert "## Dreaming, night by night" in report and "| 2 | " in report.split("## Dreaming, night by night")[1]


def test_a_killed_run_resumes_where_it_stopped(tmp_path):
    folder = tmp_path / "run"
    proc = bench(tmp_path, "--quick", "--arms", "base,naive", "--out", str(folder))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # kill it once the first unit is saved, mid-run
        units = json.loads((folder / "bench.json").read_text())["units"] if (folder / "bench.json").exists() else {}
        if any("score" in u for u in units.values()):
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = json.loads((folder / "bench.json").read_text())["units"]
    done = sum("score" in u for u in saved.values())
    assert 1 <= done < 4
    resumed = bench(tmp_path, "--resume", str(folder))
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    result = json.loads((folder / "bench.json").read_text())
    assert all("score" in result["units"][f"{a}/{k}"] for a in ("base", "naive") for k in (1, 2))
    for name, unit in saved.items():  # what was finished before the kill is kept, not run again
        if "score" in unit:
            assert result["units"][name] == unit
    assert f"{4 - done} of 4 units to run" in (folder / "log.txt").read_text()


# --- the report ---------------------------------------------------------------------------
def fake_result(sleep_flags: list[bool], recall_flags: list[bool]) -> dict:
    def unit(flags, status=None):
        rows = [{"id": f"1:{i}", "kind": "recall", "day": "2025-03-03", "mc": f, "gen": f, "reply": "",
                 "memory_tokens": 0 if status else 50} for i, f in enumerate(flags)]
        out = {"score": {"probes": rows, "drift_kl": 0.01, "perplexity": 9.0}}
        if status:
            out["train"] = {"status": status, "wall_s": 1800.0, "peak_rss_mb": 2100.0}
        return out

    return {"bench": {"arms": ["recall", "sleep"], "days": 1, "facts": 4, "seed": 0, "night_seed": None,
                      "preset": "cpu-tiny", "quick": False, "data": None},
            "machine": {"cpu": "cpu", "cores": 2, "python": "3.11", "torch": "t", "transformers": "x", "peft": "p",
                        "dreamer": "0"}, "started": "now", "loadavg": [1.0],
            "days": [{"day": "2025-03-03"}], "units": {"recall/1": unit(recall_flags), "sleep/1": unit(sleep_flags, "promoted")}}


def test_the_headline_counts_paired_probes_and_states_the_cost():
    lines = headline(fake_result([True, True, False, False], [False, True, True, True]))
    assert "recall ahead: recall 50% vs 75% (4 probes; only sleep right on 1, only recall on 2)" in "\n".join(lines)
    assert "sleep ahead: nowhere" in lines[1]
    assert "30-30 min, peak 2100 MiB" in lines[-1] and "recall spends 50 prompt tokens" in lines[-1]
    text = markdown(fake_result([True] * 4, [False] * 4))
    assert "sleep ahead: recall 100% vs 0%" in text and "| sleep | 1 | 100% (n=4) |" in text


def test_dreaming_lines_average_paired_nights():
    result = fake_result([True, False, False, False], [False] * 4)
    result["bench"]["arms"] = ["sleep", "dream"]
    result["units"]["dream/1"] = result["units"].pop("recall/1")
    result["units"]["dream/1"]["score"]["probes"][1]["gen"] = True  # dream right on 1:0 (no), 1:1 (yes)
    result["units"]["dream/1"]["train"] = {"status": "promoted", "wall_s": 2400.0, "peak_rss_mb": 1.0,
                                           "dreaming": {"reward_rate": 0.25}}
    lines = dreaming_lines(result)
    assert "on 1 paired night(s)" in lines[0]
    assert "- recall: +0.0 points by generation" in lines[1] and "only dream right on 1, only sleep on 1" in lines[1]
    assert "reward rate by night: 25%" in lines[2] and "40 min against 30 min" in lines[3]


def test_missed_replies_are_classed_by_what_they_name_instead():
    from dreamer.bench.misses import CLASSES, miss_class, misses
    from dreamer.bench.report import misses_table

    def probe(pid, day, answer, distractors=("Oslo", "Rome")):
        return {"id": pid, "day": day, "kind": "recall", "answer": answer, "distractors": list(distractors),
                "question": f"q{pid}"}

    day1 = [probe("1:0", "d1", "Lisbon"), probe("1:1", "d1", "cello"), probe("1:2", "d1", "Mochi"),
            probe("1:3", "d1", "Tofu"), probe("1:4", "d1", "harp"), probe("1:5", "d1", "Lyon")]
    general = {"id": "1:9", "day": "d1", "kind": "general", "answer": "Paris", "distractors": [], "question": "q"}
    day1.append(general)  # the bench's general probes sit on day 1: not something the user told
    day2 = [probe("2:0", "d2", "Krakow", ("Lyon", "Rome")), probe("2:1", "d2", "Lisbon")]
    replies = {"1:0": ("She lives in Oslo, or Paris.", False), "1:1": ("You play it in Krakow.", False),
               "1:2": ("Tofu!", False), "1:3": ("I'm not sure.", False), "1:4": ("Dear friend, ...", False),
               "1:5": ("Lyon", True), "2:0": ("Lisbon", False), "2:1": ("Lisbon", True)}
    rows = [{"id": i, "kind": "recall", "day": "d1" if i[0] == "1" else "d2", "gen": g, "mc": True, "reply": r}
            for i, (r, g) in replies.items()]
    result = {"days": [{"day": "d1", "probes": day1}, {"day": "d2", "probes": day2}],
              "units": {"sleep/2": {"score": {"probes": rows}}}}
    m = misses(result, "sleep", 2)
    # Only the earlier day's probes count: day 2's own miss ("Lisbon" for Krakow) is not in it.
    assert (m["asked"], m["missed"]) == (6, 5)
    assert [m[c] for c in CLASSES] == [1, 1, 1, 1, 1]
    # A distractor that is also another day's fact counts as interference.
    cello = probe("1:1", "d1", "cello", ("Krakow", "harp"))
    assert miss_class("Krakow", cello, day1 + day2) == "another day's fact"
    assert miss_class("Paris", cello, day1 + day2) == "something else"  # a general probe's answer
    # "Lisbon" is day 2's fact too, but it is 1:0's own answer: never "another" fact.
    assert miss_class("Lisbon or Oslo", day1[0], day1 + day2) == "a distractor"
    assert misses(result, "sleep", 1) is None and misses(result, "sleep", 3) is None
    assert misses_table(result)[2] == "| 2 | 5/6 | 1 | 1 | 1 | 1 | 1 | - |"


def test_lanes_never_run_two_nights_of_one_arm_and_keep_each_arms_order():
    import threading

    from dreamer.bench.run import Schedule

    schedule = Schedule([(k, a) for k in (1, 2, 3) for a in ("base", "naive", "sleep")])
    running, seen, lock = set(), [], threading.Lock()

    def lane():
        while (unit := schedule.take()) is not None:
            with lock:
                assert unit[1] not in running
                running.add(unit[1])
                seen.append(unit)
            time.sleep(0.01)
            with lock:
                running.discard(unit[1])
            schedule.finish(unit)

    lanes = [threading.Thread(target=lane) for _ in range(3)]
    for t in lanes:
        t.start()
    for t in lanes:
        t.join(10)
    assert len(seen) == 9
    for arm in ("base", "naive", "sleep"):
        assert [k for k, a in seen if a == arm] == [1, 2, 3]
    assert Schedule([(1, "base"), (1, "sleep")]).take() == (1, "sleep")  # within a night, the longest arm first


def test_runs_of_one_arm_each_merge_into_one_paired_run_and_others_are_refused():
    from benchmarks.merge_bench import merge

    sleep = fake_result([True], [False])
    sleep["units"].pop("recall/1")
    sleep["bench"]["arms"] = ["sleep"]
    dream = json.loads(json.dumps(sleep))
    dream["bench"]["arms"] = ["dream"]
    dream["units"] = {"dream/1": dream["units"].pop("sleep/1")}
    for run in (sleep, dream):
        run.update(format=1, config={"distill": {}}, sessions=[{"jobs": 1}])
    merged = merge([("sleep1", sleep), ("dream1", dream)])
    assert merged["bench"]["arms"] == ["sleep", "dream"] and sorted(merged["units"]) == ["dream/1", "sleep/1"]
    assert [s["run"] for s in merged["sessions"]] == ["sleep1", "dream1"]
    dream["config"] = {"distill": {"steps": 1}}
    with pytest.raises(SystemExit, match="dream1: its config differ"):
        merge([("sleep1", sleep), ("dream1", dream)])


def test_night_cost_puts_arms_of_other_commits_side_by_side_and_refuses_other_nights(tmp_path):
    from benchmarks.night_cost import main as night_cost
    from benchmarks.report_dreaming import render_night_cost

    sleep = fake_result([True], [False])
    sleep["units"].pop("recall/1")
    sleep["units"]["sleep/1"]["train"].update(wall_s=600.0, phases={"distil into a new expert": 540.0, "gate": 60.0})
    sleep.update(format=1, config={"distill": {"steps": 60}}, bench={**sleep["bench"], "arms": ["sleep"]},
                 sessions=[{"started": "2026-12-07 17:17:15", "jobs": 1}], loadavg=[2.0, 2.2])
    dream = json.loads(json.dumps(sleep))
    dream["units"] = {"dream/1": dream["units"].pop("sleep/1")}
    dream["units"]["dream/1"]["train"].update(wall_s=540.0, phases={"distil into a new expert": 420.0,
                                                                    "dream: score": 90.0, "gate": 30.0})
    dream["config"] = {"distill": {"steps": 60}, "dreaming": {"rehearse_reply": "answer"}}  # a key the new code added
    for name, run in (("old", sleep), ("new", dream)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "bench.json").write_text(json.dumps(run))
    out = tmp_path / "cost.json"
    args = ["--run", "sleep", "aaaa", str(tmp_path / "old"), "--run", "dream", "bbbb", str(tmp_path / "new"),
            "--change", "Dreaming on", "--out", str(out)]
    assert night_cost(args) == 0
    record = json.loads(out.read_text())
    assert record["config_keys_only_some_have"] == ["dreaming.rehearse_reply"]
    text = render_night_cost(record)
    assert "| **the whole night** | **10.0** | **9.0** |" in text and "dream night 1: 0.90 of sleep night 1." in text
    assert "| dream: score |  | 1.5 |" in text and "the code's together" in text
    dream["config"]["distill"]["steps"] = 30
    (tmp_path / "new" / "bench.json").write_text(json.dumps(dream))
    with pytest.raises(SystemExit, match="sets distill.steps otherwise"):
        night_cost(args)


def test_a_long_run_goes_on_with_acquaintances_and_shorter_runs_keep_their_days():
    committed = json.loads((Path(__file__).parent.parent / "benchmarks/results/bench_synthetic.json").read_text())
    again = make_days(committed["bench"]["seed"], len(committed["days"]), committed["bench"]["facts"])
    for day, kept in zip(again, committed["days"]):  # the committed run's days, drawn again the same
        assert day["records"] == kept["records"]
        assert day["probes"] == [{k: v for k, v in p.items() if k != "id"} for p in kept["probes"]
                                 if p["kind"] != "general"]  # the run adds those to day 1
    days = make_days(0, 14, 5)
    told = [m["content"] for d in days for r in d["records"] for m in r["messages"] if m["role"] == "user"]
    assert any(text.startswith(("My colleague", "My neighbour", "My cousin")) for text in told)
    facts = [p for d in days for p in d["probes"] if p["kind"] in ("recall", "update")]
    recall = [p["question"] for p in facts if p["kind"] == "recall"]
    assert len({p["answer"] for p in facts}) == len(facts) and len(set(recall)) == len(recall)
    assert all(p["answer"] not in p["distractors"] and len(set(p["distractors"])) == 3 for p in facts)
    abstain = [sum(p["kind"] == "abstain" for p in d["probes"]) for d in days]
    assert abstain == [3] * 5 + [0] * 9
    retention = make_days(0, 14, 5, updates=0)  # every day's facts asked after every later night
    assert [sum(p["kind"] == "recall" for p in d["probes"]) for d in retention] == [5] * 14
    assert not any(p["kind"] == "update" for d in retention for p in d["probes"])


def test_a_long_run_states_its_three_goals_from_its_own_numbers():
    from dreamer.bench.report import retention_lines

    result = fake_result([True] * 4, [True] * 4)
    result["bench"]["arms"] = ["sleep"]
    result["days"] = [{"day": f"2025-03-0{k}"} for k in range(3, 9)]  # six days
    result["config"] = {"gate": {"max_drift": 0.15}}
    first = result["units"].pop("sleep/1")
    del result["units"]["recall/1"]
    for k, (kept, ratio, drift) in enumerate([(4, 0.91, 0.01), (3, 0.92, 0.02), (2, 0.90, 0.03)], start=1):
        unit = json.loads(json.dumps(first))
        for i, row in enumerate(unit["score"]["probes"]):
            row["gen"] = row["mc"] = i < kept
        unit["score"]["drift_kl"] = drift
        unit["served"] = {"folded": True, "mib": 127.0, "adapters": 0, "decode_tok_s": 48.0, "bare_tok_s": 52.0,
                          "ratio": ratio}
        result["units"][f"sleep/{k}"] = unit
    lines = "\n".join(retention_lines(result))
    assert "Over 3 nights of `sleep`" in lines
    assert "reply names it: 100% after night 1, 50% after night 3 (0.50x)" in lines
    assert "0.90x after night 3 (lowest 0.90x over 3 nights)" in lines
    assert "0.0300 after night 3, highest 0.0300; the gate's limit for one night is 0.15" in lines
