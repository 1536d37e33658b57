"""Property-based fuzz of the YAML loader: a clear ``file:line`` error or acceptance, never a hang or a traceback.

Three kinds of input: arbitrary text and bytes; a valid pipeline file mutated with YAML's
sharp edges spliced in (anchors, aliases, merge keys, tags, complex keys, brackets,
control characters, documents); and random alias graphs, whose expanded size the test
computes on its own, so the loader must accept exactly those within ``MAX_VALUES``, with
the right content, and refuse the others at the alias that crosses the limit.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from segloop import yaml_doc
from segloop.config import Workspace, load_pipeline, pipeline_from_doc
from segloop.errors import ConfigError, ConfigErrors
from segloop.yaml_doc import load_yaml
from tests.pipeline_fixtures import SQL_RFM

pytestmark = pytest.mark.timeout(600)  # a hang fails the test; the limits keep each example to milliseconds

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                database=None)

PIPELINE = "name: shop\ndescription: fuzzed\nnodes:\n" + SQL_RFM + 'schedule: "0 3 * * *"\n'

SHARP_EDGES = [
    "&a ", "*a", "&b [1, 2]", "*b", "<<: *a\n", "<<: ", "!!int ", "!!binary ", "!!timestamp ", "!foo ",
    "!!python/object:os.system ", "? ", "? [x]\n: 1\n", "[", "]", "{", "}", ",", ": ", "- ", "\t", "\n",
    "  ", "'", '"', "|\n", ">-\n", "#", "---\n", "...\n", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "\x00",
    "\x07", "\ufeff", "\u2028", "\ud7ff", "é", "${SEGMENT_WRITE_KEY}", "~", "null", "1e999", "0x1F",
    "2026-13-45", "&a [*a]", "*undefined", "&c {k: *c}", "[[[[[[[[", "]]]]]]]]", "nodes:\n", "name: ",
    "type: ", "input: ", "inputs: [", "\r\n", "\r",
]


def assert_clear(error: ConfigError, file: str) -> None:
    """A ConfigError that names the file (and a positive line when it has one), one line per problem."""
    problems = error.errors if isinstance(error, ConfigErrors) else [error]
    for problem in problems:
        assert problem.file == file, problem
        assert problem.line is None or problem.line >= 1, problem
        assert str(problem).startswith(f"{file}:") and problem.message.strip(), problem
        assert "Traceback" not in str(problem)


def load_or_clear_error(text: str, file: str = "fuzz.yml") -> Any:
    """The parsed pipeline, or None after checking that the error is a clear one. Anything else propagates."""
    try:
        doc = load_yaml(text, file)
    except ConfigError as exc:
        assert_clear(exc, file)
        return None
    try:
        return pipeline_from_doc(doc)
    except ConfigError as exc:
        assert_clear(exc, file)
        return None


@FUZZ
@given(st.text(max_size=400))
def test_any_text(text: str) -> None:
    load_or_clear_error(text)


@FUZZ
@given(st.binary(max_size=400))
def test_any_bytes_in_a_file(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    file = tmp_path_factory.mktemp("fuzz") / "p.yml"
    file.write_bytes(data)
    try:
        load_pipeline(file)
    except ConfigError as exc:
        assert_clear(exc, str(file))


WHOLE_LINES = [
    "x: &a [*a]\n", "x: !foo bar\n", "x: !!int abc\n", "x: !!binary abc\n", "? [x, y]\n: 1\n",
    "? {k: v}\n: 1\n", "x: &d {type: sql}\n", "<<: *d\n", "<<: [*d, {input: orders}]\n", "x: *nowhere\n",
    "x: &l [1, 2]\ny: [*l, *l, *l]\n", "x: " + "[" * 120 + "]" * 120 + "\n", "name: [shop]\n",
    "nodes: &n {}\n", "x: 2026-02-30\n", "x: !!timestamp nope\n", "x: !!set {a, b}\n", "x: !!omap [a: 1]\n",
]


@st.composite
def mutated_pipelines(draw: st.DrawFn) -> str:
    """The valid pipeline with a few sharp edges spliced in: anywhere, at line starts or after a key."""
    text = PIPELINE
    for _ in range(draw(st.integers(1, 6))):
        starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]
        after_keys = [i + 2 for i in range(len(text) - 1) if text[i:i + 2] == ": "]
        at = draw(st.sampled_from(starts) | st.sampled_from(after_keys or [0]) | st.integers(0, len(text)))
        if at in starts and draw(st.booleans()):
            indent = " " * draw(st.sampled_from([0, 2, 4]))
            piece = "".join(indent + line for line in draw(st.sampled_from(WHOLE_LINES)).splitlines(keepends=True))
        else:
            piece = draw(st.sampled_from(SHARP_EDGES) | st.text(max_size=8))
        text = text[:at] + piece + text[at:]
    return text


@FUZZ
@given(mutated_pipelines())
def test_a_valid_pipeline_with_sharp_edges_spliced_in(text: str) -> None:
    pipeline = load_or_clear_error(text)
    if pipeline is not None:
        assert pipeline.nodes  # accepted: a real pipeline came out


@st.composite
def alias_graphs(draw: st.DrawFn) -> tuple[str, list[int]]:
    """Anchored lists, each holding scalars and aliases to earlier anchors; and each anchor's expanded size."""
    sizes: list[int] = []
    lines = []
    for i in range(draw(st.integers(1, 12))):
        items: list[str] = []
        size = 1  # the list itself
        for _ in range(draw(st.integers(0, 8))):
            if sizes and draw(st.booleans()):
                target = draw(st.integers(0, len(sizes) - 1))
                items.append(f"*a{target}")
                size += sizes[target]
            else:
                items.append(str(draw(st.integers(0, 9))))
                size += 1
        sizes.append(size)
        lines.append(f"k{i}: &a{i} [{', '.join(items)}]")
    return "\n".join(lines) + "\n", sizes


@settings(max_examples=300, deadline=None, database=None)
@given(alias_graphs(), st.sampled_from([50, 1_000, 250_000]))
def test_random_alias_graphs_are_accepted_exactly_within_the_limit(graph: tuple[str, list[int]], limit: int) -> None:
    text, sizes = graph
    total = 1 + sum(1 + size for size in sizes)  # the root mapping, then a key and a value per line
    original, yaml_doc.MAX_VALUES = getattr(yaml_doc, "MAX_VALUES", None), limit
    try:
        if total <= limit:
            doc = load_yaml(text, "g.yml")
            assert count_values(doc.data) == total
        else:
            with pytest.raises(ConfigError) as caught:
                load_yaml(text, "g.yml")
            assert_clear(caught.value, "g.yml")
            assert f"more than {limit:,} values" in str(caught.value)
            # the line where the running count crosses the limit
            running, crossed = 1, None
            for number, size in enumerate(sizes, start=1):
                running += 1 + size
                if running > limit:
                    crossed = number
                    break
            assert caught.value.line == crossed
    finally:
        yaml_doc.MAX_VALUES = original


def count_values(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + sum(1 + count_values(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(count_values(v) for v in value)
    return 1


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(mutated_pipelines(), min_size=1, max_size=4))
def test_broken_files_never_hide_a_good_one(tmp_path_factory: pytest.TempPathFactory, others: list[str]) -> None:
    root = tmp_path_factory.mktemp("ws")
    (root / "pipelines").mkdir()
    (root / "pipelines" / "good.yml").write_text(PIPELINE.replace("name: shop", "name: good"))
    for i, text in enumerate(others):
        assume("name: good" not in text)
        (root / "pipelines" / f"other{i}.yml").write_text(text, encoding="utf-8", errors="surrogatepass")
    workspace = Workspace.load(root)
    assert workspace.find_pipeline("good") == root / "pipelines" / "good.yml"
    assert [entry.name for entry in workspace.scan_pipelines() if entry.file.stem == "good"] == ["good"]
