"""Bad input at the public boundary (issue 12): one table of (callable, arguments, expected
exception type, words the message must contain) over models/, tokenizers, tasks and tuning, and
the validation helpers of course_lib.validate that they share."""
from __future__ import annotations

import pytest
import torch

from course_lib import validate
from course_lib.models import attention, lm, rnn, seq2seq, transformer, vit
from course_lib.models.captioner import Captioner, PatchEncoder
from course_lib.models.gpt import GPT, GPTConfig
from course_lib.models.llava import VisualLM
from course_lib.tasks import recall, text
from course_lib.tokenizers import BPETokenizer, CharTokenizer
from course_lib.tuning import sequences, sft

V = 11
torch.manual_seed(0)
TOK = CharTokenizer.from_text("abcdefghi\n ")
BPE = BPETokenizer.train("ab ab ab abc abc", 258)
RNN = rnn.RNNLanguageModel(V, 8, 16)
S2S = seq2seq.Seq2Seq(V, V, d_emb=4, n_h=4, d_s=8, d_a=4)
GPT_ = GPT(GPTConfig(vocab_size=V, block_size=16, n_layer=1, n_head=2, n_embd=16))
CAP = Captioner(V, image_size=16, patch_size=8, d_model=16, enc_layers=1, dec_layers=1, n_heads=2, max_len=8)
VLM = VisualLM(PatchEncoder(16, 8, 3, 16, 1, 2), GPT_)
IMG = torch.rand(2, 3, 16, 16)
VIT = vit.ViT(16, 8, 3, 4, 16, 1, 2)
IDS = torch.tensor([[1, 2, 3], [4, 5, 6]])
LEN = torch.tensor([3, 2])
Q = torch.randn(3, 4)

OOV = torch.tensor([[1, 2, V]])
NEG = torch.tensor([[1, -1, 2]])
FLOAT_IDS = torch.tensor([[1.0, 2.0]])
BOOL_IDS = torch.tensor([[True, False]])

CASES = [
    # RNN language model
    ("rnn oov", RNN, (OOV,), ValueError, ["[0, 11)", "11"]),
    ("rnn negative", RNN, (NEG,), ValueError, ["[0, 11)", "-1"]),
    ("rnn float ids", RNN, (FLOAT_IDS,), TypeError, ["integer", "float32"]),
    ("rnn bool ids", RNN, (BOOL_IDS,), TypeError, ["integer", "bool"]),
    ("rnn empty batch", RNN, (torch.zeros(0, 3, dtype=torch.long),), ValueError, ["empty"]),
    ("rnn zero layers", rnn.RNNLanguageModel, (V, 8, 16, 0), ValueError, ["positive", "0"]),
    ("rnn negative layers", rnn.RNNLanguageModel, (V, 8, 16, -2), ValueError, ["positive", "-2"]),
    ("rnn sequence_loss float targets", rnn.sequence_loss, (torch.randn(1, 3, V), torch.zeros(1, 3)), TypeError,
     ["integer", "targets"]),
    ("rnn sequence_loss target -100", rnn.sequence_loss, (torch.randn(1, 2, V), torch.tensor([[1, -100]])),
     ValueError, ["targets", "[0, 11)", "-100"]),
    ("rnn sample nan logits", rnn.sample_with_temperature, (torch.tensor([[float("nan"), 1.0]]), 0.0), ValueError,
     ["NaN"]),
    ("rnn sample negative temperature", rnn.sample_with_temperature, (torch.randn(1, 3), -1.0), ValueError,
     ["temperature", "-1.0"]),
    # Seq2Seq
    ("s2s oov src", S2S.encode, (OOV, torch.tensor([3])), ValueError, ["src", "[0, 11)"]),
    ("s2s negative src", S2S.encode, (NEG, torch.tensor([3])), ValueError, ["src", "[0, 11)"]),
    ("s2s float src", S2S.encode, (FLOAT_IDS, torch.tensor([2])), TypeError, ["src", "integer"]),
    ("s2s oov tgt", S2S, (IDS, LEN, torch.tensor([[1, 12], [1, 2]])), ValueError, ["tgt_in", "[0, 11)"]),
    ("s2s teacher forcing", S2S, (IDS, LEN, IDS, 1.5), ValueError, ["teacher_forcing", "1.5"]),
    ("s2s zero vocab", seq2seq.Seq2Seq, (0, V), ValueError, ["positive"]),
    # attention and the transformer
    ("attention int Q", attention.attention_weights, (torch.ones(3, 4, dtype=torch.long),
                                                       torch.ones(3, 4, dtype=torch.long)), TypeError,
     ["Q", "floating"]),
    ("attention mixed dtypes", attention.attention_weights, (Q, Q.double()), TypeError, ["dtype", "float64"]),
    ("mha zero heads", transformer.MultiHeadAttention, (16, 0), ValueError, ["n_heads", "positive"]),
    ("mha zero d_model", transformer.MultiHeadAttention, (0, 2), ValueError, ["d_model", "positive"]),
    ("encoder negative layers", transformer.TransformerEncoder, (-1, 16, 2), ValueError, ["n_layers", "-1"]),
    ("split_heads zero", transformer.split_heads, (torch.randn(1, 2, 8), 0), ValueError, ["n_heads", "positive"]),
    # GPT and sampling
    ("gpt oov", GPT_, (OOV,), ValueError, ["[0, 11)"]),
    ("gpt negative", GPT_, (NEG,), ValueError, ["[0, 11)"]),
    ("gpt float ids", GPT_, (FLOAT_IDS,), ValueError, ["integer", "float32"]),
    ("gpt zero heads", GPTConfig, (V, 16, 1, 0, 16), ValueError, ["n_head", "positive"]),
    ("gpt zero layers", GPTConfig, (V, 16, 0, 2, 16), ValueError, ["n_layer", "positive"]),
    ("generate negative temperature", lm.generate, (GPT_, IDS, 2), ValueError, ["temperature"],
     dict(temperature=-0.5)),
    ("generate top_k zero", lm.generate, (GPT_, IDS, 2), ValueError, ["top_k", "0"], dict(top_k=0)),
    ("generate top_p 1.5", lm.generate, (GPT_, IDS, 2), ValueError, ["top_p", "1.5"], dict(top_p=1.5)),
    ("generate oov prompt", lm.generate, (GPT_, OOV, 2), ValueError, ["[0, 11)"]),
    ("generate float max_new_tokens", lm.generate, (GPT_, IDS, 2.5), TypeError, ["max_new_tokens", "integer"]),
    ("sample_next nan", lm.sample_next, (torch.tensor([[float("nan"), 0.0]]),), ValueError, ["NaN"],
     dict(temperature=0.0)),
    ("continuations of a str", lm.continuations, (GPT_, TOK, "abc", 2), TypeError, ["prompts", "list"]),
    ("continuations empty", lm.continuations, (GPT_, TOK, [], 2), ValueError, ["prompts", "empty"]),
    ("continuations batch_size 0", lm.continuations, (GPT_, TOK, ["ab"], 2), ValueError, ["batch_size"],
     dict(batch_size=0)),
    ("masked_lm_loss float labels", lm.masked_lm_loss, (torch.randn(1, 2, V), torch.zeros(1, 2)), TypeError,
     ["labels", "integer"]),
    ("masked_lm_loss label oov", lm.masked_lm_loss, (torch.randn(1, 2, V), torch.tensor([[1, V]])), ValueError,
     ["labels", "[0, 11)"]),
    ("masked_lm_loss label -5", lm.masked_lm_loss, (torch.randn(1, 2, V), torch.tensor([[1, -5]])), ValueError,
     ["labels", "-100"]),
    # captioner and VisualLM
    ("captioner oov", CAP, (IMG, torch.tensor([[1, V], [1, 2]])), ValueError, ["tokens", "[0, 11)"]),
    ("captioner negative", CAP, (IMG, torch.tensor([[1, -3], [1, 2]])), ValueError, ["tokens", "[0, 11)"]),
    ("captioner float tokens", CAP, (IMG, torch.zeros(2, 3)), TypeError, ["tokens", "integer"]),
    ("captioner int images", CAP, (IMG.long(), IDS), TypeError, ["images", "floating"]),
    ("captioner zero heads", Captioner, (V,), ValueError, ["n_heads", "positive"], dict(n_heads=0)),
    ("captioner negative dec_layers", Captioner, (V,), ValueError, ["dec_layers", "-1"], dict(dec_layers=-1)),
    ("patch encoder zero patch", PatchEncoder, (16, 0, 3, 16, 1, 2), ValueError, ["patch_size", "positive"]),
    ("vit zero patch", vit.ViT, (16, 0, 3, 4, 16, 1, 2), ValueError, ["patch_size", "positive"]),
    ("vit integer images", VIT, (IMG.long(),), TypeError, ["images", "floating"]),
    ("vlm oov", VLM, (IMG, torch.tensor([[1, V], [1, 2]])), ValueError, ["[0, 11)"]),
    ("vlm float text", VLM, (IMG, torch.zeros(2, 3)), TypeError, ["integer"]),
    ("vlm answer a str", VLM.answer, (IMG[:1], "ab", TOK), TypeError, ["prompts", "list"]),
    ("vlm answer batch_size -1", VLM.answer, (IMG[:1], ["ab"], TOK), ValueError, ["batch_size"],
     dict(batch_size=-1)),
    # tokenizers
    ("char decode floats", TOK.decode, ([1.5, 2.0],), TypeError, ["integer", "float"]),
    ("char decode bools", TOK.decode, ([True, False],), TypeError, ["integer", "bool"]),
    ("char decode float tensor", TOK.decode, (torch.tensor([1.0, 2.0]),), TypeError, ["integer", "float32"]),
    ("char decode oov", TOK.decode, ([1, 99],), ValueError, ["99", "out of range"]),
    ("bpe decode floats", BPE.decode, ([97.7],), TypeError, ["integer", "float"]),
    ("bpe decode negative", BPE.decode, ([-1],), ValueError, ["-1", "out of range"]),
    ("char encode not a str", TOK.encode, (["a"],), TypeError, ["str", "list"]),
    # tasks
    ("random_windows float ids", text.random_windows, (torch.rand(50), 2, 4), TypeError, ["ids", "integer"]),
    ("random_windows zero batch", text.random_windows, (torch.arange(50), 0, 4), ValueError, ["batch_size"]),
    ("recall zero batch", recall.recall_batch, (0, 4), ValueError, ["batch_size"]),
    ("corpus val_fraction 1.5", text.CharCorpus.load, ("tiny_shakespeare", 1.5), ValueError,
     ["val_fraction", "1.5"]),
    ("corpus val_fraction 0", text.CharCorpus.load, ("tiny_shakespeare", 0.0), ValueError, ["val_fraction"]),
    ("random_windows zero block", text.random_windows, (torch.arange(50), 2, 0), ValueError, ["block_size"]),
    # tuning
    ("respond batch_size -1", sft.respond, (GPT_, TOK, ["ab"]), ValueError, ["batch_size", "-1"],
     dict(batch_size=-1)),
    ("respond a str", sft.respond, (GPT_, TOK, "ab"), TypeError, ["prompts", "list"]),
    ("respond negative max_new_tokens", sft.respond, (GPT_, TOK, ["ab"], -1), ValueError, ["max_new_tokens"]),
    ("token_logprobs float ids", sequences.token_logprobs, (torch.randn(1, 3, V), torch.zeros(1, 3)), TypeError,
     ["ids", "integer"]),
    ("token_logprobs oov", sequences.token_logprobs, (torch.randn(1, 3, V), torch.tensor([[1, 2, V]])), ValueError,
     ["ids", "[0, 11)"]),
    ("token_logprobs zero temperature", sequences.token_logprobs, (torch.randn(1, 3, V), IDS[:1], 0.0), ValueError,
     ["temperature"]),
    ("sample_responses a str", sequences.sample_responses, (GPT_, TOK, "ab"), TypeError, ["prompts", "list"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_a_clear_message(case):
    name, fn, args, exc, words, *kw = case
    with pytest.raises(exc) as e:
        fn(*args, **(kw[0] if kw else {}))
    for w in words:
        assert w in str(e.value), f"{name}: {w!r} not in {str(e.value)!r}"


def test_the_table_covers_every_area():
    assert len(CASES) >= 40


@pytest.mark.parametrize("call, exc, words", [
    (lambda: validate.positive_int(0, "n"), ValueError, ["n", ">= 1", "0"]),
    (lambda: validate.positive_int(True, "n"), TypeError, ["n", "integer", "bool"]),
    (lambda: validate.positive_int(2.0, "n"), TypeError, ["float"]),
    (lambda: validate.probability(1.5, "p"), ValueError, ["p", "[0.0, 1.0]", "1.5"]),
    (lambda: validate.probability(float("nan"), "p"), ValueError, ["nan"]),
    (lambda: validate.probability(0.0, "top_p", open_low=True), ValueError, ["(0.0, 1.0]"]),
    (lambda: validate.non_empty("abc", "prompts"), TypeError, ["single str", "['abc']"]),
    (lambda: validate.non_empty([], "prompts"), ValueError, ["empty"]),
    (lambda: validate.floating(torch.ones(2, dtype=torch.long), "x"), TypeError, ["torch.int64"]),
    (lambda: validate.token_ids(torch.tensor([0, 5]), 5, "ids"), ValueError, ["[0, 5)", "[0, 5]"]),
    (lambda: validate.token_ids([1, 2], 5, "ids"), TypeError, ["torch.Tensor", "list"]),
])
def test_validation_helpers(call, exc, words):
    with pytest.raises(exc) as e:
        call()
    for w in words:
        assert w in str(e.value)


def test_valid_inputs_pass_through():
    assert validate.positive_int(3, "n") == 3 and validate.probability(1, "p") == 1.0
    assert validate.non_empty(("a", "b"), "xs") == ["a", "b"]
    ids = torch.tensor([[0, 4]])
    assert validate.token_ids(ids, 5) is ids
    validate.sampling(0.0, 1, 1.0)
    import numpy as np
    assert validate.id_list([torch.tensor(3), np.int64(4), 5]) == [3, 4, 5]  # what decode accepted before
    assert validate.id_list(torch.tensor([1, 2])) == [1, 2] and validate.id_list(np.array([7])) == [7]
    assert TOK.decode([torch.tensor(1)]) == TOK.decode([1])
