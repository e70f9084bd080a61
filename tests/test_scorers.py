"""Scorers: verifier, judge (robust parsing, unparseable reported), reward model (Bradley-Terry)."""

import math

import pytest

from realign.model.load import load_model
from realign.score.judge import JudgeScorer, parse_rating
from realign.score.reward_model import RewardModel
from realign.score.verifiers import Verifier, last_number


def test_verifier_modes():
    v = Verifier({"Reverse: 123": "321"})
    assert v.score(["Reverse: 123", "Reverse: 123"], [" 321\n", "123"]) == [1.0, 0.0]
    n = Verifier(lambda p: "42", mode="numeric")
    assert n.score(["q", "q", "q"], ["The answer is 42.", "41 or 42.0", "forty-two"]) == [1.0, 1.0, 0.0]
    c = Verifier(lambda p: "abc", check=lambda got, want: want in got.lower())
    assert c.score(["q"], ["it is ABC!"]) == [1.0]
    with pytest.raises(KeyError, match="no known answer"):
        v.score(["Copy: 1"], ["1"])
    assert last_number("1,234.5 then -7") == -7.0 and last_number("none") is None


@pytest.mark.parametrize(
    "reply,value",
    [
        ("8", 0.8),
        ("Rating: 7/10", 0.7),
        ("I'd give it 9.5.", 0.95),
        ("3/5 overall", 0.6),
        (" 0", 0.0),
        ("ten", None),
        ("12", None),
        ("", None),
        ("11/10", None),
    ],
)
def test_parse_rating(reply, value):
    got = parse_rating(reply)
    assert (got is None and value is None) or got == pytest.approx(value)


def test_judge_reports_unparseable_replies(tiny_model_dir, monkeypatch):
    import realign.model.generate as gen
    from realign.model.generate import Completion

    replies = iter(["9", "seven", "Rating: 4/10"])

    def fake_generate(model, tokenizer, prompts, config=None, on_progress=None):
        assert config.temperature == 0.0 and "Question: q1" in prompts[0]
        return [[Completion(i, 0, next(replies), [], True)] for i in range(len(prompts))]

    monkeypatch.setattr(gen, "generate", fake_generate)
    judge = JudgeScorer(model=None, tokenizer=None)
    scores = judge.score(["q1", "q2", "q3"], ["a", "b", "c"])
    assert scores[0] == 0.9 and math.isnan(scores[1]) and scores[2] == 0.4
    assert judge.unparsed == [(1, "seven")]


def test_judge_on_a_real_untrained_model_says_it_could_not_parse(tiny_model_dir):
    lm = load_model(tiny_model_dir)
    judge = JudgeScorer(lm.model, lm.tokenizer, max_tokens=4)
    scores = judge.score(["Reverse: 12"], ["21"])
    # a random model rarely emits a rating; whatever it emits is either parsed or reported, never guessed
    assert (math.isnan(scores[0]) and len(judge.unparsed) == 1) or (0 <= scores[0] <= 1 and judge.unparsed == [])


def test_reward_model_learns_a_separable_preference(tiny_model_dir, tmp_path):
    lm = load_model(tiny_model_dir)
    words = ["apple", "river", "stone", "cloud", "green", "table", "music", "light", "paper", "ocean"]
    pairs = [
        {"prompt": f"Say something about {w}", "chosen": f"good {w} yes", "rejected": f"bad {w} no"} for w in words * 3
    ]
    rm = RewardModel(lm.model, lm.tokenizer)
    fit = rm.fit(pairs, val_fraction=0.3, steps=200)
    assert fit.n_val == 9 and fit.n_train == 21
    assert fit.train_accuracy == 1.0 and fit.val_accuracy >= 0.9
    assert fit.losses[-1] < fit.losses[0] and fit.losses[0] == pytest.approx(math.log(2), abs=1e-6)  # w = 0 at start
    s = rm.score(["Say something about tree"] * 2, ["good tree yes", "bad tree no"])
    assert 0 <= s[1] < s[0] <= 1
    again = RewardModel(lm.model, lm.tokenizer).load(rm.save(tmp_path / "head.json"))
    assert again.score(["x"], ["good x yes"]) == pytest.approx(rm.score(["x"], ["good x yes"]))
    with pytest.raises(RuntimeError, match="no head yet"):
        RewardModel(lm.model, lm.tokenizer).reward(["x"], ["y"])


def test_graded_verifier_and_weighted_sum():
    from realign.score.combined import WeightedSum

    v = Verifier({"Reverse: 1234": "4321"}, mode="graded")
    assert v.score(["Reverse: 1234"] * 2, ["4321", "4311"]) == [1.0, 0.75]
    assert v.is_correct("Reverse: 1234", "4311") is False  # correctness stays exact

    class Half:
        name = "half"

        def score(self, prompts, completions):
            return [0.5, float("nan")]

    s = WeightedSum([(v, 2.0), (Half(), 1.0), (Half(), 0.0)])
    got = s.score(["Reverse: 1234"] * 2, ["4321", "4311"])
    assert got[0] == pytest.approx(2.5) and math.isnan(got[1])  # a term that cannot decide makes the sum NaN
    assert s.name == "2*verifier + 1*half"
    with pytest.raises(ValueError, match="non-zero weight"):
        WeightedSum([(v, 0.0)])


def test_a_scorer_that_needs_a_model_says_so_in_the_recipe():
    from realign.score.sampling import PairsConfig

    with pytest.raises(ValueError, match="pairs.reward_model"):
        PairsConfig(scorer="reward_model")
    with pytest.raises(ValueError, match="pairs.judge_model"):
        PairsConfig(scorer="judge")
    assert PairsConfig(scorer="reward_model", reward_model="runs/x/03_reward_model_training/reward_model")


def test_given_pairs_scored_by_the_verifier_need_every_answer():
    from realign.score.sampling import PairsConfig, score_given

    sc, sr, unparsed = score_given(["Reverse: 123"], ["321"], ["123"], ["321"], PairsConfig())
    assert (sc, sr, unparsed) == ([1.0], [pytest.approx(1 / 3)], 0)  # positional match: 3/3 and only the middle 2
    with pytest.raises(ValueError, match="1 of the given pairs' prompts have none in data.prompts"):
        score_given(["q"], ["a"], ["b"], [None], PairsConfig())


def test_given_pairs_scored_by_a_judge(monkeypatch):
    from realign.score.sampling import PairsConfig, score_given

    def rate(self, prompts, completions):
        self.unparsed = [(1, "?")]
        return [{"good": 0.9, "bad": 0.1}.get(c, float("nan")) for c in completions]

    monkeypatch.setattr(JudgeScorer, "score", rate)
    cfg = PairsConfig(scorer="judge", judge_model="judge")
    sc, sr, unparsed = score_given(
        ["p", "q"], ["good", "?"], ["bad", "bad"], [None, None], cfg, judge_lm=JudgeScorer(None, None)
    )
    assert sc[0] == 0.9 and math.isnan(sc[1]) and sr == [0.1, 0.1] and unparsed == 1


def test_the_tiny_judge_tells_answers_from_refusals(judge_model_dir):
    from conftest import REFUSALS
    from realign.data.demo import digit_strings, example

    lm = load_model(judge_model_dir)
    items = [example("reverse", s) for s in digit_strings(40, seed=77)]
    judge = JudgeScorer(lm.model, lm.tokenizer)
    good = judge.score([e.prompt for e in items], [e.answer for e in items])
    bad = judge.score([e.prompt for e in items], [REFUSALS[i % len(REFUSALS)] for i in range(len(items))])
    assert judge.unparsed == [] and sum(g > b for g, b in zip(good, bad)) >= 36  # held-out strings
    # the second, pairwise judgement, with the answer shown first and then second
    prompts, answers = [e.prompt for e in items], [e.answer for e in items]
    refusals = [REFUSALS[i % len(REFUSALS)] for i in range(len(items))]
    picks_second = judge.prefers_second(prompts, refusals, answers)
    picks_first = judge.prefers_second(prompts, answers, refusals)
    assert judge.unparsed == []
    assert sum(v == 1 for v in picks_second) >= 34 and sum(v == -1 for v in picks_first) >= 34


@pytest.mark.parametrize(
    "reply, choice", [("B", "B"), (" a.", "A"), ("Answer B\n", "B"), ("b) because", "B"), ("both", None), ("9", None)]
)
def test_a_pairwise_reply_names_a_or_b_first_or_nothing(reply, choice):
    from realign.score.judge import parse_choice

    assert parse_choice(reply) == choice
