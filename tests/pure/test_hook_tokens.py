"""The hook's token chain (relay.lite.hook.TokenChain): each token is good for one request,
but the one spent last is taken again until its successor is used, since its reply may have
been lost: a kernel that gave up waiting during an outage, its request answered once the path
was back, kept its spent token, and every request after it was refused for the kernel's life
(a review's finding)."""

from __future__ import annotations

from relay.lite.hook import TokenChain, new_token


def test_a_token_is_spent_by_its_request_and_names_the_next() -> None:
    chain = TokenChain()
    first = chain.current
    second = chain.spend(first)
    assert second is not None and second != first and chain.current == second
    third = chain.spend(second)
    assert third is not None and third not in (first, second)


def test_a_token_whose_reply_was_lost_is_answered_again_with_the_same_next() -> None:
    chain = TokenChain()
    first = chain.current
    second = chain.spend(first)  # answered to a kernel that had given up: the reply lost
    assert chain.spend(first) == second  # asked again: the same next token
    assert chain.spend(first) == second
    assert second is not None and chain.spend(second) is not None  # the first is dead now
    assert chain.spend(first) is None


def test_other_tokens_are_refused_and_change_nothing() -> None:
    chain = TokenChain()
    first = chain.current
    for wrong in (new_token(), "", "x" * 200, "not a token!" * 3):
        assert chain.spend(wrong) is None
    assert chain.current == first
    assert chain.spend(first) is not None
