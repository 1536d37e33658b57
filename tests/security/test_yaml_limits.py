"""Pipeline and workspace files are read within limits: a clear ``file:line`` error, fast, never a hang.

Workspace files are trusted, but a malformed or huge one (a copy-paste gone wrong, a file
from a colleague, a generated file) must give an error that says where, not a traceback,
a hang or a crash; and one bad file never stops the others.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from segloop import yaml_doc
from segloop.config import Workspace, load_pipeline, parse_pipeline
from segloop.errors import ConfigError
from segloop.yaml_doc import MAX_DEPTH, MAX_FILE_BYTES, load_yaml, read_yaml

pytestmark = pytest.mark.timeout(120)  # each of these takes milliseconds; a hang fails here

GOOD = "name: shop\nnodes:\n  orders:\n    type: sql\n    sql: select 1 as user_id\n"


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_yaml(text, "p.yml")
    return caught.value


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_an_alias_bomb_is_refused_at_the_alias_that_crosses_the_limit() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(20)]
    err = error_of("\n".join(lines))
    assert (err.file, err.line) == ("p.yml", 6)  # 9**6 > 250,000: the alias *e on line 6
    assert "alias *e here makes the file hold more than 250,000 values" in str(err)


def test_the_value_limit_counts_each_alias_as_a_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yaml_doc, "MAX_VALUES", 20)
    # mapping (1) + key `a` (1) + list of 4 (5) + key `b` (1) + list of two aliases (1 + 5 + 5)
    at_limit = "a: &x [1, 2, 3, 4]\nb: [*x, *x]\n"
    assert load_yaml(at_limit).data == {"a": [1, 2, 3, 4], "b": [[1, 2, 3, 4], [1, 2, 3, 4]]}
    over = error_of(at_limit + "c: 1\n")
    assert over.line == 3 and "the file holds more than 20 values; split it" in str(over)
    by_alias = error_of("a: &x [1, 2, 3, 4]\nb: [*x, *x, *x]\n")
    assert by_alias.line == 2 and "alias *x here" in str(by_alias)


@pytest.mark.parametrize("text, line", [("a: &a [1, *a]\n", 1), ("x: 1\nb: &b\n  c: [*b]\n", 3),
                                        ("a: &a {k: {deeper: *a}}\n", 1)])
def test_an_alias_inside_the_value_it_names_is_refused(text: str, line: int) -> None:
    err = error_of(text)
    assert err.line == line and "is inside the value" in str(err) and "infinite" in str(err)


def test_an_alias_without_anchor_is_a_clear_error() -> None:
    err = error_of("a: 1\nb: *nothing\n")
    assert err.line == 2 and "the alias *nothing names no anchor; define &nothing before it" in str(err)


def test_nesting_deeper_than_the_limit_is_refused_at_its_line() -> None:
    assert load_yaml(f"a: {nested(MAX_DEPTH - 1)}").data is not None  # the root mapping is level 1
    err = error_of(f"a: 1\nb: {nested(MAX_DEPTH)}")
    assert err.line == 2 and f"nested more than {MAX_DEPTH} levels deep" in str(err)
    deep = error_of(nested(100_000))  # no RecursionError, no crash (libyaml may stop it first)
    assert deep.line == 1 and "nest" in str(deep)


def test_aliases_and_merge_keys_within_the_limits_work() -> None:
    text = """\
name: shop
x-defaults: &defaults
  type: sql
  sql: select 1 as user_id
nodes:
  a:
    <<: *defaults
  b:
    <<: *defaults
    sql: select 2 as user_id
"""
    doc = load_yaml(text, "p.yml")
    data = doc.data
    assert data["nodes"]["a"] == {"type": "sql", "sql": "select 1 as user_id"}
    assert data["nodes"]["b"] == {"sql": "select 2 as user_id", "type": "sql"}  # its own key wins
    assert doc.duplicates == []  # a key given here and merged in is not "given twice"
    assert doc.line_of(("nodes", "b", "sql")) == 10


def test_merge_of_a_list_of_mappings_and_chained_merges() -> None:
    data = load_yaml("a: &a {x: 1, y: 1}\nb: &b {<<: *a, y: 2, z: 2}\nc: {<<: [*b, {w: 3, x: 9}]}\n").data
    assert data["c"] == {"y": 2, "z": 2, "x": 1, "w": 3}
    err = error_of("a: &a [1]\nb: {<<: *a}\n")
    assert err.line == 1 and "`<<` merges mappings only" in str(err)


@pytest.mark.parametrize("text, line, message", [
    ("a: 1\n? [x, y]\n: 2\n", 2, "a list is used as a key; keys must be names"),
    ("a: 1\n? {x: 1}\n: 2\n", 2, "a mapping is used as a key"),
    ("a: !!int twelve\n", 1, "cannot read 'twelve' as !!int"),
    ("a: 1\nb: !!binary 'abc'\n", 2, "cannot read 'abc' as !!binary"),
    ("a: !python/object:os.system ls\n", 1, "cannot read 'ls' as !python/object:os.system"),
    ("a: !custom {b: 1}\n", 1, "the tag !custom is not supported here"),
    ("a: 1\nb: \x07\n", 2, "control characters are not allowed (U+0007)"),
    ("a: [1, 2\nb: 3\n", 2, "(in a flow sequence started on line 1)"),
    ("a: 1\nb: [1, 2\n", 2, "a flow sequence opened on line 2 is never closed"),
    ("a: 'open\nb: 2\n", 1, "a quoted scalar opened on line 1 is never closed"),
    ("a: 1\n---\nb: 2\n", 2, "expected a single document in the stream, but found another document"),
    ("a: &x 1\nb: &x 2\n", 2, "found duplicate anchor (first on line 1)"),
])
def test_odd_yaml_is_a_file_line_error(text: str, line: int, message: str) -> None:
    err = error_of(text)
    assert (err.file, err.line) == ("p.yml", line)
    assert message in str(err)


def test_a_file_over_the_size_limit_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    at_limit = tmp_path / "at_limit.yml"
    at_limit.write_text(GOOD + "#" * (MAX_FILE_BYTES - len(GOOD) - 1) + "\n")
    assert at_limit.stat().st_size == MAX_FILE_BYTES
    assert load_pipeline(at_limit).name == "shop"
    big = tmp_path / "big.yml"
    with big.open("w") as handle:  # a 200 MB file: refused without reading it all
        handle.write(GOOD)
        handle.truncate(200_000_000)
    with pytest.raises(ConfigError, match=r"big.yml: the file is 200,000,000 bytes; segloop reads .* up to 1,000,000"):
        load_pipeline(big)
    with pytest.raises(ConfigError, match="up to 1,000,000 bytes"):
        parse_pipeline("#" * (MAX_FILE_BYTES + 1))


def test_a_file_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    file = tmp_path / "latin1.yml"
    file.write_bytes(b"name: shop\nnodes:\n  a:\n    sql: select 'caf\xe9'\n")
    with pytest.raises(ConfigError) as caught:
        read_yaml(file)
    assert caught.value.line == 4 and "not UTF-8 text (byte 0xe9); save the file as UTF-8" in str(caught.value)
    bom = tmp_path / "bom.yml"
    bom.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert load_pipeline(bom).name == "shop"  # a UTF-8 byte order mark is fine


def test_a_pipe_or_device_named_like_a_pipeline_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="is not a regular file"):
        read_yaml(fifo)  # opening it would wait for a writer forever


def test_a_hostile_file_does_not_hide_the_good_ones(make_workspace) -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(12))
    root = make_workspace({"shop": GOOD, "bomb": bomb, "deep": nested(50_000), "binary": "name: x\n\x00\x01"})
    workspace = Workspace.load(root)
    entries = {entry.file.stem: entry for entry in workspace.scan_pipelines()}
    assert entries["shop"].name == "shop" and entries["shop"].error is None
    assert {stem: entries[stem].error is not None for stem in ("bomb", "deep", "binary")} == {
        "bomb": True, "deep": True, "binary": True}
    assert workspace.find_pipeline("shop") == root / "pipelines" / "shop.yml"


def test_validate_names_a_pipe_in_pipelines_for_what_it_is(make_workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from segloop.cli import app

    root = make_workspace({"shop": GOOD})
    os.mkfifo(root / "pipelines" / "pipe.yml")
    monkeypatch.chdir(root)
    result = CliRunner().invoke(app, ["validate"])
    assert result.exit_code == 1
    assert "pipe.yml is not a regular file; give a .yml file" in result.output
    assert "ok " in result.output and "pipeline `shop`" in result.output


def test_a_hostile_segloop_yml_is_a_clear_error_and_the_pipelines_are_still_checked(
        make_workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from segloop.cli import app

    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(12))
    root = make_workspace({"shop": GOOD}, workspace_yml="warehouses:\n  default:\n    type: duckdb\n" + bomb)
    with pytest.raises(ConfigError) as caught:
        Workspace.load(root)
    assert caught.value.line == 9 and "the alias *e here makes the file hold more than 250,000 values" in str(caught.value)
    monkeypatch.chdir(root)
    result = CliRunner().invoke(app, ["validate"])
    assert result.exit_code == 1
    assert "segloop.yml:9: the alias *e" in result.output and "pipeline `shop`" in result.output
