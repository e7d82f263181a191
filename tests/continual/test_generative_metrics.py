"""Scoring of generated answers and the retention metrics, on hand-worked answers and
matrices."""

import math

import pytest

from mmcl.continual.generative_metrics import summarize_generative
from mmcl.continual.instruction_streams import scene_task
from mmcl.continual.instructions import answer_format, format_share, score_answers
from mmcl.continual.report import compare_table, read_report, write_report


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("7", "number"),
        ("12.5", "number"),
        ("seven", "word"),
        ("The star.", "word"),
        ("three red stars", "sentence"),
        ("a picture of a red star on the left.", "sentence"),
        ("top left", None),
        ("", None),
        ("3 stars", None),
    ],
)
def test_answer_formats(answer, expected):
    assert answer_format(answer) == expected


def test_vqa_answers_score_by_exact_match_after_normalisation():
    task = scene_task("count", 0, ["count"], 1, 4, 32, 0)
    truth = [task.test.instruction(i).answer for i in range(4)]  # counts 1, 2, 3, 4
    assert truth == ["1", "2", "3", "4"]
    scores = score_answers(task, ["1", "Two.", "three stars", "5"])
    # Right: "1", "Two." (-> "2"); wrong: "three stars" (-> "3 stars"), "5".
    assert scores.score == 0.5
    # In the format asked (a number): "1" and "5" only; "Two." is a word.
    assert scores.format_share == 0.5 and scores.cider_d is None


def test_mixed_tasks_ask_each_question_for_the_format_of_its_answer():
    task = scene_task("mixed", 0, ["shape", "count"], 1, 2, 32, 0)
    first, second = (task.test.instruction(i).answer for i in range(2))
    assert answer_format(first) == "word" and answer_format(second) == "number"
    assert score_answers(task, ["star", "7"]).format_share == 1.0
    assert score_answers(task, ["7", "star"]).format_share == 0.0


def test_captions_score_by_attribute_accuracy_with_cider_d_beside():
    task = scene_task("captions", 0, ["caption"], 1, 2, 32, 0)
    scenes = [task.test.instruction(i).scene for i in range(2)]
    right = [f"{s.count} {s.colour} {s.shape}s on a background" for s in scenes]
    wrong_colour = [
        f"{s.count} {'red' if s.colour != 'red' else 'blue'} {s.shape}s" for s in scenes
    ]
    # Shape and count right in both, colour wrong in both: 2 of 3 attributes.
    assert score_answers(task, right).score == 1.0
    assert score_answers(task, wrong_colour).score == pytest.approx(2 / 3)
    references = [task.test.instruction(i).references[0] for i in range(2)]
    copied, unrelated = score_answers(task, references), score_answers(task, ["x y z"] * 2)
    assert copied.cider_d > unrelated.cider_d == 0.0
    assert copied.format_share == pytest.approx(format_share(references, "sentence"))


GENERATIVE = {
    "initial": {
        "scores": [0.2, 0.1, 0.0],
        "formats": [0.3, 0.6, 0.0],
        "cider_d": [None, 0.5, None],
        "general": {"captioning": 0.5, "vqa": 0.3},
    },
    "rows": [
        {
            "formats": [1.0, 0.2, 0.1],
            "cider_d": [None, 0.4, None],
            "general": {"captioning": 0.4, "vqa": 0.4},
        },
        {
            "formats": [0.8, 0.9, 0.3],
            "cider_d": [None, 1.2, None],
            "general": {"captioning": 0.2, "vqa": 0.4},
        },
        {
            "formats": [0.4, 0.6, 1.0],
            "cider_d": [None, 0.9, None],
            "general": {"captioning": 0.1, "vqa": 0.3},
        },
    ],
}


def test_retention_metrics_on_a_hand_worked_record():
    metrics = summarize_generative(GENERATIVE)
    assert metrics["general_initial"] == pytest.approx(0.4)  # (0.5 + 0.3) / 2
    assert metrics["general_last"] == pytest.approx(0.2)  # (0.1 + 0.3) / 2
    assert metrics["general_retained"] == pytest.approx(0.5)  # 0.2 / 0.4
    assert metrics["format_initial"] == pytest.approx(0.3)  # (0.3 + 0.6 + 0) / 3
    assert metrics["format_retained"] == pytest.approx(2 / 3)  # (0.4 + 0.6 + 1.0) / 3
    # Old tasks since learnt: task 0: 0.4 - 1.0, task 1: 0.6 - 0.9 -> mean -0.45.
    assert metrics["format_bwt"] == pytest.approx(-0.45)


def test_general_retained_is_undefined_when_the_base_model_scores_nothing():
    record = {**GENERATIVE, "initial": {**GENERATIVE["initial"], "general": {"vqa": 0.0}}}
    assert math.isnan(summarize_generative(record)["general_retained"])


def test_reports_gain_the_retention_columns_only_for_instruction_streams(tmp_path):
    matrix = [[0.5, 0.1, 0.0], [0.4, 0.7, 0.1], [0.2, 0.5, 0.9]]
    names = ["shape", "captions", "count"]
    write_report(tmp_path / "gen", matrix, names, "finetune", generative=GENERATIVE)
    write_report(tmp_path / "clip", matrix, names, "finetune")
    generative = read_report(tmp_path / "gen")
    assert generative["metrics"]["format_retained"] == pytest.approx(2 / 3)
    assert generative["generative"]["cider_d_matrix"][1] == [None, 1.2, None]
    assert generative["generative"]["general"]["after_task"][2] == {"captioning": 0.1, "vqa": 0.3}
    markdown = (tmp_path / "gen" / "report.md").read_text()
    assert "| General retained | 0.5000 |" in markdown
    assert "| after task 3 | 0.1000 | 0.3000 |" in markdown
    both = compare_table({"gen": generative, "clip": read_report(tmp_path / "clip")})
    header = both.splitlines()[0]
    assert header.endswith("| General retained | Format retained | Time |")
    assert both.splitlines()[3].count("—") == 3  # the CLIP run has neither column, nor time
    assert "General" not in compare_table({"clip": read_report(tmp_path / "clip")})
