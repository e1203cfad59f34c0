"""ReCap on a local GPT-2-style checkpoint (`families.recap.decoder_checkpoint`): the byte-level BPE against the
reference implementation (`tokenizers`), the decoder against GPT-2's forward computed here from the raw
Hugging Face weights, the paper's frozen / trained split, training through `fit`, and restoring a trained
checkpoint without the folder. The checkpoints are tiny and made here (a BPE trained on the test captions,
random weights in the Hugging Face layout); nothing is downloaded."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from models.recap.gpt2 import BPETokenizer, GPT2Decoder, GPT2Vocab, checkpoint_files, load_checkpoint
from models.recap.task import RecapTask
from tests.test_recap import TINY, tiny_data, tiny_task
from vidmem.common import UserError
from vidmem.training import fit

TEXTS = [r[5] for r in tiny_data().references] + [
    "Hello, world! It's 2024 -- what's up?", "  leading and   inner  spaces\n", "don't you'll we've I'm she'd",
    "Ünïcödé ✓ — naïve café", "numbers 12345 and 3.14", "#C C picks a cup", "tab\there", "",
]


def make_checkpoint(root: Path, n_embd: int = 24, n_layer: int = 2, n_head: int = 4, fmt: str = "safetensors",
                    prefix: bool = True, seed: int = 0, texts: list[str] = TEXTS, n_positions: int = 64,
                    vocab_size: int = 420) -> Path:
    """A GPT-2-style folder: BPE trained on TEXTS (<|endoftext|> last, as GPT-2's), random weights, Conv1D
    layout ([in, out]), config.json as Hugging Face writes it."""
    from tokenizers import ByteLevelBPETokenizer

    root.mkdir(parents=True, exist_ok=True)
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(list(texts) * 3, vocab_size=vocab_size, min_frequency=1, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    tok.save_model(str(root))
    enc = json.loads((root / "vocab.json").read_text())
    eos = enc.pop("<|endoftext|>")
    enc = {k: v - (v > eos) for k, v in enc.items()}
    enc["<|endoftext|>"] = len(enc)
    (root / "vocab.json").write_text(json.dumps(enc))
    v, p, d = len(enc), n_positions, n_embd
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.2
    sd = {"wte.weight": r(v, d), "wpe.weight": r(p, d), "ln_f.weight": 1 + r(d), "ln_f.bias": r(d)}
    for i in range(n_layer):
        h = f"h.{i}."
        sd |= {h + "ln_1.weight": 1 + r(d), h + "ln_1.bias": r(d), h + "ln_2.weight": 1 + r(d), h + "ln_2.bias": r(d),
               h + "attn.c_attn.weight": r(d, 3 * d), h + "attn.c_attn.bias": r(3 * d),
               h + "attn.c_proj.weight": r(d, d), h + "attn.c_proj.bias": r(d),
               h + "mlp.c_fc.weight": r(d, 4 * d), h + "mlp.c_fc.bias": r(4 * d),
               h + "mlp.c_proj.weight": r(4 * d, d), h + "mlp.c_proj.bias": r(d),
               h + "attn.bias": torch.tril(torch.ones(1, 1, p, p))}      # old checkpoints' mask buffer: ignored
    if prefix:
        sd = {f"transformer.{k}": t for k, t in sd.items()} | {"lm_head.weight": sd["wte.weight"].clone()}
    if fmt == "safetensors":
        save_file({k: t.contiguous() for k, t in sd.items()}, str(root / "model.safetensors"))
    else:
        torch.save(sd, root / "pytorch_model.bin")
    cfg = {"model_type": "gpt2", "vocab_size": v, "n_positions": p, "n_embd": d, "n_layer": n_layer,
           "n_head": n_head, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
           "bos_token_id": v - 1, "eos_token_id": v - 1, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    (root / "config.json").write_text(json.dumps(cfg))
    return root


def reference_logits(root: Path, ids: torch.Tensor) -> torch.Tensor:
    """GPT-2's forward written out from the raw checkpoint (Conv1D: x @ W + b; gelu_new; causal softmax)."""
    from safetensors.torch import load_file

    cfg = json.loads((root / "config.json").read_text())
    sd = {k.removeprefix("transformer."): t for k, t in load_file(str(root / "model.safetensors")).items()}
    d, nh = cfg["n_embd"], cfg["n_head"]
    t = ids.shape[1]

    def ln(x, name):
        mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return (x - mu) / torch.sqrt(var + 1e-5) * sd[name + ".weight"] + sd[name + ".bias"]

    def conv(x, name):
        return x @ sd[name + ".weight"] + sd[name + ".bias"]

    x = sd["wte.weight"][ids] + sd["wpe.weight"][:t]
    for i in range(cfg["n_layer"]):
        h = f"h.{i}."
        q, k, v = conv(ln(x, h + "ln_1"), h + "attn.c_attn").split(d, -1)
        q, k, v = (z.reshape(*z.shape[:2], nh, d // nh).transpose(1, 2) for z in (q, k, v))
        w = q @ k.transpose(-1, -2) / math.sqrt(d // nh)
        w = w.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf")).softmax(-1)
        x = x + conv((w @ v).transpose(1, 2).reshape(*x.shape), h + "attn.c_proj")
        a = conv(ln(x, h + "ln_2"), h + "mlp.c_fc")
        a = 0.5 * a * (1 + torch.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a ** 3)))
        x = x + conv(a, h + "mlp.c_proj")
    return ln(x, "ln_f") @ sd["wte.weight"].T


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("gpt2"))


# ---------------------------------------------------------------------------------------------------- tokenizer
def test_bpe_matches_the_reference_byte_level_bpe(gpt2_dir):
    from tokenizers import ByteLevelBPETokenizer

    ref = ByteLevelBPETokenizer(str(gpt2_dir / "vocab.json"), str(gpt2_dir / "merges.txt"))
    ours = BPETokenizer.from_dir(gpt2_dir)
    for text in TEXTS:
        ids = ours.encode_ids(text)
        assert ids == ref.encode(text).ids, text
        assert ours.decode_ids(ids) == text
    assert ours.eos == ours.size - 1 == json.loads((gpt2_dir / "vocab.json").read_text())["<|endoftext|>"]


def test_family_ids_shift_gpt2_tokens_by_one(gpt2_dir):
    vocab = GPT2Vocab(BPETokenizer.from_dir(gpt2_dir))
    ids = vocab.encode("The red circle moves left.", 50)
    assert ids == [i + 1 for i in vocab.bpe.encode_ids("The red circle moves left.")] and min(ids) >= 1
    assert vocab.decode(ids + [0, 5, 6]) == "The red circle moves left."      # 0 = EOS ends the caption
    assert len(vocab.encode("the red circle moves left and then grows", 3)) == 3
    assert GPT2Vocab.from_state(vocab.state()).encode("grows.", 9) == vocab.encode("grows.", 9)


# ---------------------------------------------------------------------------------------------------- decoder
def _decoder(root: Path) -> GPT2Decoder:
    spec, weights, _ = load_checkpoint(root)
    dec = GPT2Decoder(spec, 4, 0.0)
    dec.lm.load_state_dict(weights)                   # strict: the checkpoint fills every GPT-2 tensor
    return dec.eval()


def test_decoder_is_the_checkpoints_gpt2_and_the_gates_start_shut(gpt2_dir):
    dec = _decoder(gpt2_dir)
    vocab = GPT2Vocab(BPETokenizer.from_dir(gpt2_dir))
    gpt = torch.tensor([vocab.bpe.encode_ids(t)[:12] + [0] * (12 - len(vocab.bpe.encode_ids(t)[:12]))
                        for t in TEXTS[:6]])
    ref = reference_logits(gpt2_dir, gpt)
    eos = dec.eos
    keep = [j for j in range(ref.shape[-1]) if j != eos]
    with torch.no_grad():
        plain = dec(gpt + 1, None)                                   # family ids: GPT-2's ids shifted by one
        gated = dec(gpt + 1, torch.randn(6, 5, dec.width) * 3)       # the gated blocks on a VL memory
    for ours in (plain, gated):
        assert torch.allclose(ours[..., 0], ref[..., eos], atol=1e-5)        # id 0 is GPT-2's <|endoftext|>
        assert torch.allclose(ours[..., 1:][..., keep], ref[..., keep], atol=1e-5)
        assert torch.isinf(ours[..., 1 + eos]).all()                              # EOS only through id 0
    assert torch.equal(plain, gated)                                 # the gates start shut: exactly GPT-2


def test_bin_files_without_the_prefix_load_the_same(tmp_path, gpt2_dir):
    other = make_checkpoint(tmp_path / "bin", fmt="bin", prefix=False)
    a, b = load_checkpoint(gpt2_dir)[1], load_checkpoint(other)[1]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_paper_split_of_frozen_and_trained_parameters(gpt2_dir):
    dec = _decoder(gpt2_dir)
    trained = {n for n, p in dec.named_parameters() if p.requires_grad}
    frozen = {n for n, p in dec.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("lm.") and ".ln_1." not in n and ".ln_2." not in n for n in frozen)
    assert {n for n in trained if n.startswith("lm.")} == {n for n in dict(dec.named_parameters())
                                                           if ".ln_1." in n or ".ln_2." in n}
    assert {"lm.wte.weight", "lm.wpe.weight", "lm.ln_f.weight", "lm.h.0.attn.c_attn.weight",
            "lm.h.1.mlp.c_fc.weight"} <= frozen
    assert any(n.startswith("gated.") and n.endswith("_gate") for n in trained)


@pytest.mark.parametrize("break_it, message", [
    (lambda r: (r / "vocab.json").unlink(), "vocab.json: missing"),
    (lambda r: (r / "model.safetensors").unlink(), "no model.safetensors or pytorch_model.bin"),
    (lambda r: (r / "config.json").write_text(json.dumps({**json.loads((r / "config.json").read_text()),
                                                           "activation_function": "relu"})), "not GPT-2's gelu_new"),
    (lambda r: (r / "config.json").write_text(json.dumps({**json.loads((r / "config.json").read_text()),
                                                           "n_embd": 32})), r"wte.weight has shape \(\d+, 24\), config.json implies"),
    (lambda r: (r / "model.safetensors").write_bytes(b"not a tensor file"), "model.safetensors: not a readable"),
])
def test_a_broken_checkpoint_is_a_one_line_error(tmp_path, break_it, message):
    root = make_checkpoint(tmp_path / "g")
    break_it(root)
    with pytest.raises(UserError, match=message) as err:
        load_checkpoint(root)
    assert "\n" not in str(err.value)


def test_the_run_key_lists_the_folders_files_and_names_a_missing_one(tmp_path):
    root = make_checkpoint(tmp_path / "g", fmt="bin")
    assert [f.name for f in checkpoint_files(root)] == ["config.json", "pytorch_model.bin", "vocab.json",
                                                        "merges.txt"]
    (root / "merges.txt").unlink()
    with pytest.raises(UserError, match=r"merges.txt: missing"):
        checkpoint_files(root)


def test_a_missing_folder_names_the_param_and_the_path(tmp_path):
    task = tiny_task(tmp_path, "clip", decoder_checkpoint=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=r"decoder_checkpoint: .*nowhere: no such folder"):
        task.build()


# ---------------------------------------------------------------------------------------------------- training
def test_recap_trains_on_a_gpt2_decoder_and_restores_without_the_folder(tmp_path, gpt2_dir):
    """hidden 32 mappers feed a 24-wide GPT-2 through projections; only the paper's trainable part moves;
    the checkpoint carries the tokenizer and shape, so captioning needs no folder."""
    data = tiny_data()
    task = tiny_task(tmp_path, "clip", data=data, epochs=20, decoder_checkpoint=str(gpt2_dir), gate_lr_scale=30.0)
    assert task.vocab.size == BPETokenizer.from_dir(gpt2_dir).size
    init = {k: v.clone() for k, v in task.build().state_dict().items()}
    res = fit(task, tmp_path / "ck", progress=False)
    losses = [r["train/loss"] for r in res.history]
    assert losses[-1] < 0.4 * losses[0]
    ckpt = torch.load(tmp_path / "ck" / "best.pt", weights_only=False)
    sd = ckpt["state_dict"]
    for k in ("decoder.lm.wte.weight", "decoder.lm.h.0.attn.c_attn.weight", "decoder.lm.h.1.mlp.c_proj.bias",
              "decoder.lm.ln_f.weight"):
        assert torch.equal(sd[k], init[k]), k                                          # frozen
    assert not torch.equal(sd["decoder.lm.h.0.ln_1.weight"], init["decoder.lm.h.0.ln_1.weight"])
    assert not torch.equal(sd["decoder.gated.0.attn_gate"], init["decoder.gated.0.attn_gate"])
    assert "text_in.weight" in sd and "vl_out.weight" in sd and "gpt2" in ckpt and "tokenizer" in ckpt

    samples = task.samples("clip", "test")
    model = task.restore(ckpt)
    captions = task.caption(model, samples)
    moved = tmp_path / "moved"
    gpt2_copy = make_checkpoint(moved)                      # the folder is gone: restore reads the checkpoint
    for f in gpt2_copy.iterdir():
        f.unlink()
    gpt2_copy.rmdir()
    fresh = RecapTask(task.name, task.recipe, task.config.__class__(**{**task.config.__dict__,
                                                                       "decoder_checkpoint": str(moved)}),
                      task.paths, None, data=data)
    again = fresh.caption(fresh.restore(ckpt), samples)
    assert again == captions and all(isinstance(c, str) and c for c in captions)
    assert sum(c == r.reference for c, r in zip(captions, samples)) >= 3 * len(samples) // 4   # it learned
