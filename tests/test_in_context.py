"""In-context learning (notebook 07): k-shot prompts in a format no tuning task uses, the example
words drawn apart from the query, and the exact-match grid over tasks, k and seeds."""
from __future__ import annotations

import pytest

from course_lib.models.gpt import GPT, GPTConfig
from course_lib.models.lm import continuations
from course_lib.tasks import instructions
from course_lib.tokenizers import CharTokenizer
from course_lib.tuning import sft

ALPHABET = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # Tiny Shakespeare's 65
SEP = instructions.FEW_SHOT_SEP
WORDS = ["rose", "love", "night", "day", "sun", "moon", "king", "crown", "fair", "foul"]


def test_a_k_shot_prompt_is_the_examples_then_the_query():
    ex = instructions.few_shot_example("shout", ["rose", "love"], "night")
    assert ex.prompt == f"rose{SEP}ROSE\nlove{SEP}LOVE\nnight{SEP}"
    assert ex.response == "NIGHT\n" and ex.answer == "NIGHT" and ex.task == "shout" and ex.word == "night"
    assert instructions.few_shot_example("copy", [], "night").prompt == f"night{SEP}"  # zero-shot: no example
    assert instructions.few_shot_example("first", ["day"], "sun").text == f"day{SEP}d\nsun{SEP}s\n"
    # the format is not the tuning template: no instruction, no "Q: " / "A: "
    assert instructions.PROMPT_PREFIX not in ex.prompt and instructions.RESPONSE_PREFIX not in ex.prompt
    assert len(SEP) == 1 and SEP in ALPHABET and not SEP.isalpha() and SEP != instructions.STOP


def test_bad_few_shot_inputs_are_refused():
    with pytest.raises(ValueError, match="unknown few-shot task"):
        instructions.few_shot_example("reverse", ["rose"], "night")
    with pytest.raises(ValueError, match="among the examples"):
        instructions.few_shot_example("copy", ["rose", "night"], "night")
    with pytest.raises(ValueError, match="repeat"):
        instructions.few_shot_example("copy", ["rose", "rose"], "night")
    with pytest.raises(ValueError, match="letters only"):
        instructions.few_shot_example("copy", ["ro se"], "night")
    with pytest.raises(TypeError, match="single str"):
        instructions.few_shot_example("copy", "rose", "night")
    with pytest.raises(ValueError, match="k must be an integer >= 0"):
        instructions.few_shot_set("copy", ["night"], WORDS, -1)
    with pytest.raises(ValueError, match="k must be an integer >= 0"):
        instructions.few_shot_set("copy", ["night"], WORDS, 1.0)
    with pytest.raises(ValueError, match="need 3 distinct demo words other than the query 'night', got 2"):
        instructions.few_shot_set("copy", ["night"], ["rose", "love", "rose"], 3)
    with pytest.raises(ValueError, match="query word"):
        instructions.few_shot_set("copy", [], WORDS, 1)


def test_few_shot_sets_are_deterministic_and_never_show_the_query():
    queries = ["night", "day", "sun", "moon"]
    a = instructions.few_shot_set("copy", queries, WORDS, 4, seed=0)
    assert a == instructions.few_shot_set("copy", queries, WORDS, 4, seed=0)
    assert [e.prompt for e in a] != [e.prompt for e in instructions.few_shot_set("copy", queries, WORDS, 4, seed=1)]
    for e, q in zip(a, queries, strict=True):
        lines = e.prompt.split(instructions.STOP)
        shots = [line.split(SEP)[0] for line in lines[:-1]]
        assert len(shots) == 4 == len(set(shots)) and q not in shots and set(shots) <= set(WORDS)
        assert lines[-1] == f"{q}{SEP}" and e.answer == q
    # a query word may be in the pool: it is skipped, and k examples are still drawn
    assert all(len(e.prompt.split("\n")) == 10 for e in instructions.few_shot_set("shout", WORDS, WORDS, 9))
    assert [e.prompt for e in instructions.few_shot_set("first", queries, WORDS, 0)] == [f"{q}{SEP}" for q in queries]


@pytest.fixture
def model():
    return GPT(GPTConfig(vocab_size=len(ALPHABET), block_size=64, n_layer=1, n_head=2, n_embd=16))


def _oracle(prompts):
    """Infers the task from the first example (nothing to infer from at k = 0) and answers it."""
    out = []
    for p in prompts:
        *shots, query = p.split("\n")
        if not shots:
            out.append("")
            continue
        word, ans = shots[0].split(SEP)
        task = "copy" if ans == word else "shout" if ans == word.upper() else "first"
        out.append(instructions.FEW_SHOT_TASKS[task](query[: -len(SEP)]))
    return out


def test_the_grid_scores_each_task_k_and_seed(monkeypatch, model):
    tok = CharTokenizer(ALPHABET)
    monkeypatch.setattr(sft, "greedy_writes", lambda m, t, exs: [a == e.answer for e, a in
                                                                 zip(exs, _oracle([e.prompt for e in exs]), strict=True)])
    scores = sft.in_context_scores(model, tok, ["copy", "first", "shout"], WORDS[:4], WORDS[4:], [0, 1, 2], [0, 1])
    assert scores == {t: {0: [0.0, 0.0], 1: [1.0, 1.0], 2: [1.0, 1.0]} for t in ("copy", "first", "shout")}
    # a model that always copies the query: right on copy at every k, never on the other two tasks
    monkeypatch.setattr(sft, "greedy_writes", lambda m, t, exs: [e.prompt.split("\n")[-1][: -len(SEP)] == e.answer
                                                                 for e in exs])
    scores = sft.in_context_scores(model, tok, ["copy", "shout"], WORDS[:4], WORDS[4:], [0, 2], [3])
    assert scores == {"copy": {0: [1.0], 2: [1.0]}, "shout": {0: [0.0], 2: [0.0]}}


def test_the_grid_runs_a_real_model_and_refuses_what_does_not_fit(model):
    tok = CharTokenizer(ALPHABET)
    scores = sft.in_context_scores(model, tok, ["first"], WORDS[:3], WORDS[3:], [0, 1], [0])
    assert set(scores) == {"first"} and all(0.0 <= s <= 1.0 for v in scores["first"].values() for s in v)
    long = ["abcdefghijkl", "mnopqrstuvwx", "abcdefghijkm", "abcdefghijkn", "abcdefghijko", "abcdefghijkp"]
    with pytest.raises(ValueError, match=r"fit block_size=64 together, got 117 \+ 13 tokens"):
        sft.in_context_scores(model, tok, ["copy"], long[:1], long[1:], [4], [0])
    for bad in ("copy", ["reverse"], []):
        with pytest.raises(ValueError, match="tasks must be"):
            sft.in_context_scores(model, tok, bad, WORDS[:2], WORDS[2:], [0], [0])
    with pytest.raises(ValueError, match="ks must be"):
        sft.in_context_scores(model, tok, ["copy"], WORDS[:2], WORDS[2:], 1, [0])
    with pytest.raises(ValueError, match="seeds must be"):
        sft.in_context_scores(model, tok, ["copy"], WORDS[:2], WORDS[2:], [1], [True])


def test_greedy_writes_agrees_with_generating_token_by_token(model):
    """A response is what greedy decoding writes first exactly when the teacher-forced argmax says so."""
    tok = CharTokenizer(ALPHABET)
    prompts = ["rose:", "night:ni", "a", "king:KING\nsun:"]
    gen = continuations(model, tok, prompts, 6)  # greedy, token by token, with the KV cache
    own = [instructions.Example("copy", "x", p, g[:4]) for p, g in zip(prompts, gen, strict=True)]
    assert sft.greedy_writes(model, tok, own) == [True] * 4
    assert sft.greedy_writes(model, tok, own, batch_size=3) == [True] * 4  # batches of unequal lengths
    other = [ALPHABET[(ALPHABET.index(g[3]) + 1) % len(ALPHABET)] for g in gen]  # the 4th token changed
    wrong = [instructions.Example("copy", "x", p, g[:3] + o) for p, g, o in zip(prompts, gen, other, strict=True)]
    assert sft.greedy_writes(model, tok, wrong) == [False] * 4
    assert sft.greedy_writes(model, tok, [own[0], wrong[1]]) == [True, False]
    assert sft.exact_match(model, tok, [instructions.Example("copy", "x", p, g[:2] + "\n")
                                        for p, g in zip(prompts, gen, strict=True)])["all"] == \
        sum(sft.greedy_writes(model, tok, [instructions.Example("copy", "x", p, g[:2] + "\n")
                                           for p, g in zip(prompts, gen, strict=True)])) / 4
    with pytest.raises(ValueError, match="fit block_size=64"):
        sft.greedy_writes(model, tok, [instructions.Example("copy", "x", "a" * 60, "b" * 5)])
    with pytest.raises(ValueError, match="at least one example"):
        sft.greedy_writes(model, tok, [])
