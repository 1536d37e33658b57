"""`on_removed: null_traits` (docs/sync.md): customers gone from the input get their traits nulled."""

from __future__ import annotations

import pytest

from tests.operators.segment_fixtures import scores_to_segment
from tests.operators.test_segment_node import run, scores, setup, write_key, write_source  # noqa: F401
from tests.segment.send.fake_segment import FakeSegment


def identify(traits: str) -> str:
    return scores_to_segment(call="identify", customer_id="user_id", traits=traits, on_removed="null_traits")


@pytest.mark.parametrize(("traits", "names"), [
    ("[iphone, apple_watch]", ["apple_watch", "iphone"]),
    ("{iphone: iphone_score, apple_watch: watch_score}", ["iphone_score", "watch_score"]),
])
def test_null_traits_identifies_each_customer_gone_with_the_mapped_traits_null(
    make_workspace, traits: str, names: list[str]
) -> None:
    root = setup(make_workspace, scores(5), identify(traits))
    fake = FakeSegment()
    first = run(root, fake)
    assert first.ok, first.node("to_segment").error
    assert sorted(fake.delivered()[0]["traits"]) == names

    write_source(root, scores(5).slice(0, 3))  # two customers left the audience
    before = len(fake.delivered())
    second = run(root, fake)
    assert second.ok, second.node("to_segment").error
    m = second.node("to_segment").metrics
    assert m["removed"] == 2 and m["removed_sent"] == 2 and m["unchanged"] == 3
    gone = fake.delivered()[before:]
    assert sorted(msg["userId"] for msg in gone) == ["162514336", "162514337"]
    for msg in gone:
        assert msg["type"] == "identify"
        assert msg["traits"] == dict.fromkeys(names)  # every mapped trait, set to null

    again = run(root, fake)  # nulled once, not again on every run
    assert again.node("to_segment").metrics["removed"] == 0
    assert len(fake.delivered()) == before + 2
