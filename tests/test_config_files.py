"""Reading YAML config files: every failure is the caller's error type, naming the file and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from gsal_edge.config_files import read_yaml_mapping, validation_message


class _Err(ValueError):
    pass


def test_reads_a_mapping_and_an_empty_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("x: 1\nnested: {y: [1, 2]}\n")
    assert read_yaml_mapping(tmp_path / "a.yaml", _Err) == {"x": 1, "nested": {"y": [1, 2]}}
    (tmp_path / "b.json").write_text('{"x": 2}')
    assert read_yaml_mapping(str(tmp_path / "b.json"), _Err) == {"x": 2}
    (tmp_path / "empty.yaml").write_text("# only a comment\n")
    assert read_yaml_mapping(tmp_path / "empty.yaml", _Err) == {}


@pytest.mark.parametrize(("content", "match"), [
    ("- a\n- b\n", r"bad\.yaml: the thing: top level must be a mapping, got list"),
    ("x: [1, 2\n", r"bad\.yaml: cannot read the thing \("),
    (b"\xff\xfe\x00garbage", r"bad\.yaml: cannot read the thing \("),
])
def test_bad_files_raise_the_callers_error(tmp_path: Path, content: str | bytes, match: str) -> None:
    p = tmp_path / "bad.yaml"
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content)
    with pytest.raises(_Err, match=match):
        read_yaml_mapping(p, _Err, "the thing")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(_Err, match=r"nope\.yaml: cannot read YAML"):
        read_yaml_mapping(tmp_path / "nope.yaml", _Err)


def test_validation_message_names_each_field() -> None:
    class Inner(BaseModel):
        n: int

    class Outer(BaseModel):
        inner: Inner
        name: str

    with pytest.raises(ValidationError) as exc:
        Outer.model_validate({"inner": {"n": "x"}})
    msg = validation_message(exc.value)
    assert msg.startswith("inner.n: ") and "; name: Field required" in msg
