"""A local GPT-2-style checkpoint as ReCap's text decoder (`families.recap.decoder_checkpoint`), never downloaded.

What the paper uses (§1.1): GPT-2 with a tanh-gated cross-attention block before every layer; embeddings,
self-attention, MLPs and the final LayerNorm frozen; the cross-attention blocks, their gates and every
`ln_1` / `ln_2` trained; the text mapper reads the lower level's captions through GPT-2's frozen token +
position embeddings. Gates start at 0, so the untrained model is exactly the checkpoint's language model
(tested against the reference implementation).

The checkpoint is a folder in the Hugging Face layout: `config.json` (n_embd, n_layer, n_head, n_positions,
vocab_size, layer_norm_epsilon, activation_function), `model.safetensors` or `pytorch_model.bin` (keys with or
without the `transformer.` prefix; Conv1D weights stored [in, out]), and the byte-level BPE files
`vocab.json` + `merges.txt`. Any model of that shape loads (gpt2, distilgpt2, gpt2-medium, a model of one's
own).

Ids: the family's convention is kept, 0 = BOS / EOS / padding and 1..V the GPT-2 tokens shifted by one, so
the data, decoding and caption stages are the same for both decoders; 0 maps to GPT-2's `<|endoftext|>`.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import regex
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidmem.common import UserError

# GPT-2's pre-tokeniser: contractions, letters, digits, other symbols, each with an optional leading space.
_SPLIT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
    """Byte-level BPE's reversible map of the 256 bytes to printable characters: printable Latin-1 bytes map
    to themselves, the others to code points from 256 up, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


class BPETokenizer:
    """GPT-2's byte-level BPE from its `vocab.json` (token → id) and `merges.txt` (ranked pairs)."""

    def __init__(self, encoder: Mapping[str, int], merges: Sequence[str], eos: str = "<|endoftext|>"):
        self.encoder = {str(k): int(v) for k, v in encoder.items()}
        self.decoder = {v: k for k, v in self.encoder.items()}
        self.merges = [m for m in merges if m and not m.startswith("#version")]
        self.ranks = {tuple(m.split(" ")): i for i, m in enumerate(self.merges)}
        self.byte_to_char = byte_alphabet()
        self.char_to_byte = {c: b for b, c in self.byte_to_char.items()}
        if eos not in self.encoder:
            raise UserError(f"vocab.json: no {eos!r} token (a GPT-2 vocabulary ends with it)")
        self.eos = self.encoder[eos]
        self._cache: dict[str, list[str]] = {}

    @classmethod
    def from_dir(cls, root: Path) -> BPETokenizer:
        vocab, merges = root / "vocab.json", root / "merges.txt"
        for f in (vocab, merges):
            if not f.is_file():
                raise UserError(f"{f}: missing (a GPT-2-style checkpoint folder holds vocab.json and merges.txt)")
        try:
            encoder = json.loads(vocab.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f"{vocab}: not valid JSON ({e})") from None
        if not isinstance(encoder, dict):
            raise UserError(f"{vocab}: expected an object mapping tokens to ids")
        return cls(encoder, merges.read_text(encoding="utf-8").splitlines())

    @property
    def size(self) -> int:
        return max(self.encoder.values()) + 1

    def _bpe(self, piece: str) -> list[str]:
        if piece in self._cache:
            return self._cache[piece]
        word = list(piece)
        while len(word) > 1:
            pairs = [(self.ranks.get((a, b), math.inf), i) for i, (a, b) in enumerate(zip(word, word[1:]))]
            rank, _ = min(pairs)
            if rank == math.inf:
                break
            first, second = self.merges[int(rank)].split(" ")
            merged, i = [], 0
            while i < len(word):       # merge every occurrence of the best pair, left to right
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self._cache[piece] = word
        return word

    def encode_ids(self, text: str) -> list[int]:
        out = []
        for piece in _SPLIT.findall(text):
            chars = "".join(self.byte_to_char[b] for b in piece.encode("utf-8"))
            out += [self.encoder[t] for t in self._bpe(chars)]
        return out

    def decode_ids(self, ids: Iterable[int]) -> str:
        chars = "".join(self.decoder.get(int(i), "") for i in ids)
        return bytes(self.char_to_byte[c] for c in chars).decode("utf-8", errors="replace")


class GPT2Vocab:
    """The family's vocabulary interface (`encode`, `decode`, `size`) over a BPE tokenizer: ids shifted by one,
    0 = BOS / EOS / padding. Captions keep their case and punctuation, as GPT-2 reads them."""

    def __init__(self, bpe: BPETokenizer):
        self.bpe = bpe

    @property
    def size(self) -> int:
        return self.bpe.size

    def encode(self, text: str, max_tokens: int) -> list[int]:
        return [i + 1 for i in self.bpe.encode_ids(text.strip()) if i != self.bpe.eos][:max_tokens]

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            if int(i) == 0:
                break
            out.append(int(i) - 1)
        return self.bpe.decode_ids(out).strip()

    def state(self) -> dict[str, Any]:
        """What a checkpoint stores to decode without the folder."""
        return {"encoder": dict(sorted(self.bpe.encoder.items(), key=lambda kv: kv[1])),
                "merges": list(self.bpe.merges)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> GPT2Vocab:
        return cls(BPETokenizer(state["encoder"], state["merges"]))


# ------------------------------------------------------------------------------------------------- weights
@dataclass(frozen=True)
class GPT2Spec:
    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    layer_norm_epsilon: float = 1e-5
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    eos_token_id: int = -1              # -1: the last token (GPT-2's <|endoftext|>, 50256)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], where: str) -> GPT2Spec:
        act = cfg.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise UserError(f"{where}: activation_function {act!r} is not GPT-2's gelu_new")
        for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
            if cfg.get(flag):
                raise UserError(f"{where}: {flag}: true is not supported (plain GPT-2 blocks only)")
        if cfg.get("n_inner") not in (None, 4 * int(cfg.get("n_embd", 0))):
            raise UserError(f"{where}: n_inner {cfg.get('n_inner')} is not 4 × n_embd")
        try:
            spec = cls(int(cfg["vocab_size"]), int(cfg.get("n_positions", cfg.get("n_ctx", 1024))),
                       int(cfg["n_embd"]), int(cfg["n_layer"]), int(cfg["n_head"]),
                       float(cfg.get("layer_norm_epsilon", 1e-5)), float(cfg.get("resid_pdrop", 0.1)),
                       float(cfg.get("embd_pdrop", 0.1)), float(cfg.get("attn_pdrop", 0.1)),
                       int(cfg.get("eos_token_id", int(cfg["vocab_size"]) - 1)))
        except KeyError as e:
            raise UserError(f"{where}: no {e.args[0]!r} (a GPT-2 config.json names n_embd, n_layer, n_head, "
                            f"vocab_size)") from None
        if spec.n_embd % spec.n_head:
            raise UserError(f"{where}: n_embd {spec.n_embd} is not divisible by n_head {spec.n_head}")
        return spec

    def state(self) -> dict[str, Any]:
        return asdict(self)


def checkpoint_dir(path: str | Path) -> Path:
    root = Path(path)
    if not root.exists():
        raise UserError(f"families.recap.decoder_checkpoint: {root}: no such folder (a local GPT-2-style "
                        f"checkpoint: config.json, model.safetensors or pytorch_model.bin, vocab.json, merges.txt)")
    if not root.is_dir():
        raise UserError(f"families.recap.decoder_checkpoint: {root}: expected the checkpoint's folder, not a file")
    return root


def weights_file(root: Path) -> Path:
    found = next((root / w for w in WEIGHT_FILES if (root / w).is_file()), None)
    if found is None:
        raise UserError(f"{root}: no {' or '.join(WEIGHT_FILES)}")
    return found


def checkpoint_files(root: Path) -> list[Path]:
    """The files a run reads from the folder (its run key hashes them), each checked to be there."""
    files = [root / "config.json", weights_file(root), root / "vocab.json", root / "merges.txt"]
    for f in files:
        if not f.is_file():
            raise UserError(f"{f}: missing (a GPT-2-style checkpoint folder holds config.json, the weights, "
                            f"vocab.json and merges.txt)")
    return files


def read_spec(root: Path) -> GPT2Spec:
    cfg_file = root / "config.json"
    if not cfg_file.is_file():
        raise UserError(f"{cfg_file}: missing (a GPT-2-style checkpoint folder holds config.json)")
    try:
        return GPT2Spec.from_config(json.loads(cfg_file.read_text()), str(cfg_file))
    except ValueError as e:
        raise UserError(f"{cfg_file}: not valid JSON ({e})") from None


def read_vocab(root: Path) -> GPT2Vocab:
    return GPT2Vocab(BPETokenizer.from_dir(root))


def load_checkpoint(path: str | Path, vocab: GPT2Vocab | None = None
                    ) -> tuple[GPT2Spec, dict[str, Tensor], GPT2Vocab]:
    """(spec, the GPT-2 weights as `GPT2Decoder.lm`'s state dict, tokenizer) of a local checkpoint folder;
    `vocab`: the folder's tokenizer when already read."""
    root = checkpoint_dir(path)
    spec = read_spec(root)
    weights = weights_file(root)
    try:
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file
            raw = load_file(str(weights))
        else:
            raw = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one line naming it
        raise UserError(f"{weights}: not a readable weights file ({type(e).__name__}: {e})") from None
    vocab = vocab or read_vocab(root)
    if vocab.size != spec.vocab_size:
        raise UserError(f"{root / 'vocab.json'}: {vocab.size} tokens, config.json says vocab_size {spec.vocab_size}")
    if spec.eos_token_id >= 0 and spec.eos_token_id != vocab.bpe.eos:
        raise UserError(f"{root / 'config.json'}: eos_token_id {spec.eos_token_id} is not vocab.json's <|endoftext|> "
                        f"({vocab.bpe.eos})")
    return spec, convert_weights(raw, spec, str(weights)), vocab


def convert_weights(raw: Mapping[str, Tensor], spec: GPT2Spec, where: str) -> dict[str, Tensor]:
    """Hugging Face GPT-2 keys (Conv1D [in, out]) → `GPT2Decoder.lm`'s keys (Linear [out, in])."""
    sd = {(k[len("transformer."):] if k.startswith("transformer.") else k): v for k, v in raw.items()}
    out: dict[str, Tensor] = {}

    def take(key: str, transpose: bool = False) -> Tensor:
        if key not in sd:
            raise UserError(f"{where}: no {key!r} (expected GPT-2's weights: wte, wpe, h.<i>.*, ln_f)")
        t = sd[key].float()
        return t.t().contiguous() if transpose else t

    out["wte.weight"], out["wpe.weight"] = take("wte.weight"), take("wpe.weight")
    for name, shape in (("wte.weight", (spec.vocab_size, spec.n_embd)),
                        ("wpe.weight", (spec.n_positions, spec.n_embd))):
        if tuple(out[name].shape) != shape:
            raise UserError(f"{where}: {name} has shape {tuple(out[name].shape)}, config.json implies {shape}")
    for i in range(spec.n_layer):
        p = q = f"h.{i}."
        for ln in ("ln_1", "ln_2"):
            out[q + ln + ".weight"], out[q + ln + ".bias"] = take(p + ln + ".weight"), take(p + ln + ".bias")
        for mod in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            out[q + mod + ".weight"] = take(p + mod + ".weight", transpose=True)
            out[q + mod + ".bias"] = take(p + mod + ".bias")
    out["ln_f.weight"], out["ln_f.bias"] = take("ln_f.weight"), take("ln_f.bias")
    return out


# ------------------------------------------------------------------------------------------------- modules
class GPT2Block(nn.Module):
    def __init__(self, s: GPT2Spec):
        super().__init__()
        d = s.n_embd
        self.heads = s.n_head
        self.ln_1 = nn.LayerNorm(d, eps=s.layer_norm_epsilon)
        self.ln_2 = nn.LayerNorm(d, eps=s.layer_norm_epsilon)
        self.attn = nn.ModuleDict({"c_attn": nn.Linear(d, 3 * d), "c_proj": nn.Linear(d, d)})
        self.mlp = nn.ModuleDict({"c_fc": nn.Linear(d, 4 * d), "c_proj": nn.Linear(4 * d, d)})
        self.attn_drop, self.resid_drop = s.attn_pdrop, nn.Dropout(s.resid_pdrop)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.attn["c_attn"](self.ln_1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.attn_drop if self.training else 0.0)
        x = x + self.resid_drop(self.attn["c_proj"](a.transpose(1, 2).reshape(b, t, d)))
        h = self.mlp["c_proj"](F.gelu(self.mlp["c_fc"](self.ln_2(x)), approximate="tanh"))
        return x + self.resid_drop(h)


class GPT2Decoder(nn.Module):
    """GPT-2 with ReCap's gated cross-attention before every block; the same interface as the family's own
    decoder (`embed_tokens`, `forward(ids, vl)` → logits over 0 = EOS and the V tokens shifted by one)."""

    def __init__(self, spec: GPT2Spec, mult: int, dropout: float):
        super().__init__()
        from models.recap.model import GatedCrossBlock

        self.spec, self.width = spec, spec.n_embd
        self.lm = nn.ModuleDict({
            "wte": nn.Embedding(spec.vocab_size, spec.n_embd), "wpe": nn.Embedding(spec.n_positions, spec.n_embd),
            "h": nn.ModuleList(GPT2Block(spec) for _ in range(spec.n_layer)),
            "ln_f": nn.LayerNorm(spec.n_embd, eps=spec.layer_norm_epsilon)})
        self.gated = nn.ModuleList(GatedCrossBlock(spec.n_embd, spec.n_head, mult, dropout)
                                   for _ in range(spec.n_layer))
        self.drop = nn.Dropout(spec.embd_pdrop)
        self.eos = spec.eos_token_id if spec.eos_token_id >= 0 else spec.vocab_size - 1
        self.freeze()

    def freeze(self) -> None:
        """The paper's split: embeddings, self-attention, MLPs and ln_f frozen; ln_1 / ln_2 and the gated
        blocks trained."""
        for name, p in self.lm.named_parameters():
            p.requires_grad_(".ln_1." in f".{name}" or ".ln_2." in f".{name}")

    def gpt_ids(self, ids: Tensor) -> Tensor:
        return torch.where(ids == 0, torch.full_like(ids, self.eos), ids - 1)

    def embed_tokens(self, ids: Tensor) -> Tensor:
        """GPT-2's token + position embedding (the text mapper's input, frozen as in the paper)."""
        pos = torch.arange(ids.shape[1], device=ids.device).clamp(max=self.spec.n_positions - 1)
        return self.lm["wte"](self.gpt_ids(ids)) + self.lm["wpe"](pos)

    def forward(self, ids: Tensor, vl: Tensor | None, pad: Tensor | None = None) -> Tensor:
        """ids [B, T] (right-padded; causal attention makes padding irrelevant) → logits [B, T, V + 1]."""
        x = self.drop(self.embed_tokens(ids))
        for gated, block in zip(self.gated, self.lm["h"]):
            if vl is not None:
                x = gated(x, vl)
            x = block(x)
        g = self.lm["ln_f"](x) @ self.lm["wte"].weight.T                         # [B, T, V]
        out = torch.cat([g[..., self.eos : self.eos + 1], g], dim=-1)       # a new tensor: fill it in place
        out[..., 1 + self.eos] = float("-inf")              # EOS is id 0 only, never its shifted copy
        return out
