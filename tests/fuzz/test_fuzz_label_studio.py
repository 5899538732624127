"""Fuzzing the Label Studio export reader: ``trainer.annotation.parse_label_studio`` (a file) and
``parse_label_studio_tasks`` (tasks already read).

Contract: a bad file raises ``AnnotationError``; a bad task or result is a line in ``problems`` (or
``ignored``), never an exception, so one bad item cannot hide the problems of the others.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fuzz_support import Tally, fuzz_settings, json_values, mutated, seed_decorator
from hypothesis import given
from hypothesis import strategies as st

from trainer.annotation import AnnotationError, parse_label_studio, parse_label_studio_tasks

numbers = st.one_of(st.floats(0, 100), st.integers(0, 4000), st.sampled_from([float("nan"), float("inf"), -1, 0]))


@st.composite
def ls_tasks(draw: st.DrawFn) -> list[dict[str, Any]]:
    tasks = []
    for i in range(draw(st.integers(0, 3))):
        results = [{"type": draw(st.sampled_from(["rectanglelabels", "rectanglelabels", "polygonlabels", "choices"])),
                    "original_width": draw(numbers), "original_height": draw(numbers),
                    "value": {"x": draw(numbers), "y": draw(numbers), "width": draw(numbers), "height": draw(numbers),
                              "rotation": draw(st.sampled_from([0, 0, 0, 15])),
                              "rectanglelabels": draw(st.sampled_from([["void"], ["crack"], [], ["void", "crack"]]))}}
                   for _ in range(draw(st.integers(0, 3)))]
        tasks.append({"id": i, "data": {"image": draw(st.sampled_from(
            [f"/data/local-files/?d=round/images/s{i}.png", "http://[::1", "http://[", "", "s.png", "?d=%ff%fe"])),
            "gsal_image_id": f"st-01/s{i}"},
            "annotations": [{"result": results, "was_cancelled": draw(st.booleans()) and draw(st.booleans())}]})
    return tasks


# These readers used to raise on: a malformed image URL ('http://[::1'), a non-numeric 'rotation', a non-list
# 'annotations'/'result', an integer beyond the double range, deep nesting. Each is now a reported problem.


def test_fuzz_parse_label_studio(tmp_path: Path) -> None:
    tally = Tally("label-studio-export")
    path = tmp_path / "export.json"

    @fuzz_settings(300)
    @seed_decorator()
    @given(st.one_of(ls_tasks().map(json.dumps), mutated(ls_tasks(), 4).map(json.dumps), json_values().map(json.dumps),
                     st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
                     st.integers(50, 3000).map(lambda d: "[" * d + "]" * d)))
    def run(text: str) -> None:
        path.write_text(text, encoding="utf-8")
        problems: list[str] = []
        ignored: list[str] = []
        try:
            parsed = parse_label_studio(path, problems, ignored)
        except AnnotationError as e:
            assert str(path) in str(e)
            tally.tick("AnnotationError")
            return
        assert all(isinstance(p, str) for p in problems + ignored)
        tally.tick("problems" if problems else "parsed" if parsed else "empty")

    try:
        run()
    finally:
        tally.report(tmp_path, minimum=0)


def test_fuzz_parse_label_studio_tasks(tmp_path: Path) -> None:
    tally = Tally("label-studio-tasks")

    @fuzz_settings(300)
    @seed_decorator()
    @given(st.one_of(ls_tasks(), mutated(ls_tasks(), 4), st.lists(json_values(), max_size=4)))
    def run(tasks: Any) -> None:
        problems: list[str] = []
        ignored: list[str] = []
        tasks = tasks if isinstance(tasks, list) else [tasks]  # the reader hands over a JSON list's items
        parsed = parse_label_studio_tasks(enumerate(tasks), problems, ignored)
        assert all(isinstance(p, str) for p in problems + ignored)
        tally.tick("problems" if problems else "parsed" if parsed else "empty")

    try:
        run()
    finally:
        tally.report(tmp_path, minimum=0)


@pytest.mark.parametrize("task, what", [
    ({"data": {"image": "http://[::1"}, "annotations": [{"result": []}]}, "ValueError (urlparse)"),
    ({"data": {"image": "a.png"}, "annotations": [{"result": [{"type": "rectanglelabels", "original_width": 8,
      "original_height": 8, "value": {"x": 1, "y": 1, "width": 2, "height": 2, "rotation": "x",
                                      "rectanglelabels": ["void"]}}]}]}, "ValueError (rotation)"),
    ({"data": {"image": "a.png"}, "annotations": 5}, "TypeError (annotations)"),
    ({"data": {"image": "a.png"}, "annotations": [{"result": 3}]}, "TypeError (result)"),
    ({"data": {"image": "a.png"}, "annotations": [{"result": [{"type": "rectanglelabels", "original_width": 10**400,
      "original_height": 8, "value": {"x": 1, "y": 1, "width": 2, "height": 2, "rectanglelabels": ["void"]}}]}]},
     "OverflowError (original_width)"),
])

def test_label_studio_task_bug_cases(task: dict[str, Any], what: str) -> None:
    """The fuzzer's findings, one by one: each must be reported (``problems``/``ignored``), not raised."""
    problems: list[str] = []
    ignored: list[str] = []
    parse_label_studio_tasks(enumerate([task]), problems, ignored)
    assert all(isinstance(p, str) for p in problems + ignored), what
