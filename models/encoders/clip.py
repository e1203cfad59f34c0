"""open_clip wrapper: any open_clip config, weights from `none | <local file> | <tag>`, open_clip's tokenizer.

Why a wrapper: every stage needs the same three decisions made once — where the weights come from (random
init must be seeded; OpenAI files need QuickGELU, which open_clip only checks for tags), how uint8 frames from
decord become model input (batched, no PIL), and what a caption's per-token features are (see `text_tokens`).

`vidmem-tiny` is a small config registered with open_clip from `model_configs/`, fast enough on 2 CPU cores
for the embedded dataset; the standard configs (ViT-B-32, ViT-B-16, ViT-L-14, ...) work unchanged.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from torch import nn
from torch.nn import functional as F

from vidmem.common import UserError, file_hash

from .frames import OPENAI_MEAN, OPENAI_STD, FrameTransform
from .weights import load_failure, safe_globals

log = logging.getLogger(__name__)

TINY_MODEL = "vidmem-tiny"
PRECISIONS = ("fp32", "fp16", "bf16")
open_clip.add_model_config(Path(__file__).parent / "model_configs")


@dataclass
class ClipConfig:
    """Which open_clip model and weights to use (the `clip` params group)."""

    model: str = TINY_MODEL           # an open_clip config: vidmem-tiny, ViT-B-32, ViT-B-16, ViT-L-14, ...
    pretrained: str = "none"          # none (seeded random init) | path to a weights file | open_clip tag
    quick_gelu: bool | None = None    # None: auto (OpenAI TorchScript files, tags that need it, -quickgelu)
    image_size: int | None = None     # override the config's input size (position embeddings are resized)
    precision: str = "fp32"           # fp32 | fp16 | bf16
    resize_mode: str | None = None    # None: the config's (CLIP: shortest side + center crop) | squash (whole frame)
    seed: int = 0                     # random init when pretrained is none
    cache_dir: str | None = None      # where a tag's download goes (open_clip's default when None)

    def check(self, where: str) -> None:
        if self.precision not in PRECISIONS:
            raise UserError(f"params.yaml {where}.precision: '{self.precision}' is not one of {PRECISIONS}")


# ---------------------------------------------------------------------------------------------------- weights
def state_dict_hash(module: nn.Module) -> str:
    """sha256 over names, dtypes, shapes and bytes of a module's state_dict, in key order."""
    h = hashlib.sha256()
    for key, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def checkpoint_hash(source: str | os.PathLike | nn.Module) -> str:
    """Identity of the weights behind a feature store: the sha256 of a weights file, or of a state_dict."""
    if isinstance(source, ClipEncoder):
        return source.checkpoint_hash()
    if isinstance(source, nn.Module):
        return state_dict_hash(source)
    return file_hash(source)


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """OpenAI's released CLIP files are TorchScript archives (a zip holding `constants.pkl` and `code/`)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _looks_like_path(value: str) -> bool:
    return os.sep in value or "/" in value or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def _summarise(keys: list[str], n: int = 5) -> str:
    more = f" (and {len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _load_file_weights(model: nn.Module, path: Path, name: str, torchscript: bool) -> None:
    """Load a local file with open_clip's loader (state_dict unwrapped, `module.` stripped), strictly."""
    try:
        with safe_globals(), warnings.catch_warnings():
            if torchscript:  # torch.load hands TorchScript archives to torch.jit.load, with two warnings
                warnings.filterwarnings("ignore", message=".*TorchScript archive.*")
                warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated.*",
                                        category=FutureWarning)
            result = open_clip.load_checkpoint(model, str(path), strict=False, weights_only=not torchscript)
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: not a weights file torch can load safely: {load_failure(e)}") from None
    except RuntimeError as e:  # size mismatches are raised even with strict=False
        detail = " ".join(str(e).split())
        raise UserError(f"{path}: weights do not fit open_clip model '{name}': {detail[:400]}") from None
    missing = list(getattr(result, "missing_keys", []))
    # TorchScript archives also carry non-persistent buffers (the text causal mask): computed, not weights
    computed = set(dict(model.named_buffers())) - set(model.state_dict())
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if k not in computed]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_summarise(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {_summarise(unexpected)}")
        raise UserError(f"{path}: weights do not fit open_clip model '{name}': " + "; ".join(parts))


class _NoRandomInitWarning(logging.Filter):
    """open_clip warns "No pretrained weights loaded ... initialized randomly" whenever it creates a model without
    a tag, also when we load a weights file right after; we say what is actually loaded instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def _create(cfg: ClipConfig, pretrained: str | None, quick_gelu: bool,
            device: str | torch.device) -> nn.Module:
    quiet = _NoRandomInitWarning()
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        return _create_model(cfg, pretrained, quick_gelu, device)
    finally:
        root.removeFilter(quiet)


def _create_model(cfg: ClipConfig, pretrained: str | None, quick_gelu: bool,
                  device: str | torch.device) -> nn.Module:
    return open_clip.create_model(
        cfg.model,
        pretrained=pretrained,
        precision=cfg.precision,
        device=device,
        force_quick_gelu=quick_gelu,
        force_image_size=cfg.image_size,
        force_preprocess_cfg={"resize_mode": cfg.resize_mode} if cfg.resize_mode else None,
        cache_dir=cfg.cache_dir,
    )


def build_clip(cfg: ClipConfig, device: str | torch.device = "cpu") -> ClipEncoder:
    """Create the open_clip model named by `cfg` with its weights, tokenizer and val transform."""
    name = cfg.model.replace("/", "-")
    if open_clip.get_model_config(name) is None:
        raise UserError(f"clip.model: '{cfg.model}' is not an open_clip config; e.g. {TINY_MODEL}, "
                        "ViT-B-32, ViT-B-16, ViT-L-14 (open_clip.list_models() lists all)")
    if cfg.precision not in PRECISIONS:
        raise UserError(f"clip.precision: '{cfg.precision}' is not one of {PRECISIONS}")
    pretrained = str(cfg.pretrained).strip()
    weights_file: Path | None = None

    if pretrained.lower() in ("none", "", "null"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = _create(cfg, None, bool(cfg.quick_gelu), device)
        log.info("clip %s: random initialisation (seed %d)", cfg.model, cfg.seed)
    elif Path(pretrained).is_file():
        weights_file = Path(pretrained)
        torchscript = is_torchscript_archive(weights_file)
        quick = cfg.quick_gelu if cfg.quick_gelu is not None else torchscript
        if torchscript and not quick and not name.endswith("quickgelu"):
            log.warning("%s is an OpenAI TorchScript file but quick_gelu is off: features will be wrong",
                        pretrained)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = _create(cfg, None, bool(quick), device)
        _load_file_weights(model, weights_file, cfg.model, torchscript)
        log.info("clip %s: weights from %s", cfg.model, weights_file)
    elif _looks_like_path(pretrained):
        raise UserError(f"clip.pretrained: weights file '{pretrained}' not found")
    else:
        tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
        if not tag_cfg:
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise UserError(f"clip.pretrained: '{pretrained}' is neither 'none', an existing file, nor an "
                            f"open_clip tag for {cfg.model} (tags: {', '.join(tags) if tags else 'none'})")
        quick = cfg.quick_gelu if cfg.quick_gelu is not None else bool(tag_cfg.get("quick_gelu", False))
        try:
            model = _create(cfg, pretrained, quick, device)
        except RuntimeError as e:
            reason = " ".join(str(e).split())[:300]
            raise UserError(f"clip.pretrained: could not get the '{pretrained}' weights for {cfg.model} "
                            f"({reason}); without internet, download them on another machine and set "
                            "clip.pretrained to the local file") from None
    model.eval()
    return ClipEncoder(model, cfg, weights_file)


# ---------------------------------------------------------------------------------------------------- encoder
class ClipEncoder(nn.Module):
    """An open_clip CLIP model with our batched frame transform, its tokenizer and per-token text features.

    To save weights that `pretrained:` accepts, save `encoder.model.state_dict()` (open_clip's key names).
    """

    def __init__(self, model: nn.Module, cfg: ClipConfig, weights_file: Path | None = None):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.weights_file = weights_file
        self.tokenizer = open_clip.get_tokenizer(cfg.model.replace("/", "-"))
        pp = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = pp.get("size", model.visual.image_size)
        size = size[0] if isinstance(size, (tuple, list)) else size
        self.transform = FrameTransform(
            size=int(size),
            mean=tuple(pp.get("mean", OPENAI_MEAN)),
            std=tuple(pp.get("std", OPENAI_STD)),
            interpolation=pp.get("interpolation", "bicubic"),
            antialias=True,
            resize_mode=pp.get("resize_mode", "shortest"),
        )

    # -- shapes
    @property
    def embed_dim(self) -> int:
        """Width of the joint image-text space (what `encode_image` / `encode_text` return)."""
        proj = self.model.visual.proj
        return int(proj.shape[1]) if proj is not None else int(self.model.visual.output_dim)

    @property
    def text_width(self) -> int:
        """Width of the per-token text features (`text_tokens`)."""
        return int(self.model.transformer.width)

    @property
    def image_size(self) -> int:
        return self.transform.size

    @property
    def context_length(self) -> int:
        return int(self.model.context_length)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.visual.conv1.weight.dtype

    # -- inputs
    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames [B,H,W,3] or [B,3,H,W] → normalised float32 [B,3,S,S] (the val transform)."""
        return self.transform(frames)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """open_clip's tokenizer: LongTensor [N, context_length]; SOT/EOT added, EOT forced on truncation."""
        return self.tokenizer(list(texts))

    # -- encoders
    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Preprocessed images [B,3,S,S] → projected embeddings [B,embed_dim]."""
        return self.model.encode_image(images.to(self.dtype), normalize=normalize)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Tokens [B,L] → projected sentence embeddings [B,embed_dim] (the EOT token's feature)."""
        if not self._trimmable():
            return self.model.encode_text(tokens, normalize=normalize)
        x, eot = self._text_forward(tokens)
        pooled = x[torch.arange(x.shape[0], device=x.device), eot]
        proj = self.model.text_projection
        if proj is not None:
            pooled = proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
        return F.normalize(pooled, dim=-1) if normalize else pooled

    def _trimmable(self) -> bool:
        m = self.model
        return (hasattr(m, "token_embedding") and getattr(m, "attn_mask", None) is not None
                and getattr(m, "text_pool_type", "argmax") in ("argmax", "eos"))

    def _text_forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ln_final output for the first L columns, L = 1 + the last sentence token in the batch.

        The text tower is causal, so features up to each sentence's EOT do not depend on the padding after
        it: dropping the all-padding tail gives the same EOT features for a fraction of the cost (captions
        are ~10 of the 77 tokens).
        """
        m = self.model
        eot = self.eot_index(tokens)
        n = int(eot.max()) + 1 if self._trimmable() else tokens.shape[1]
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens[:, :n]).to(cast) + m.positional_embedding[:n].to(cast)
        mask = m.attn_mask[:n, :n] if m.attn_mask is not None else None
        x = m.transformer(x, attn_mask=mask)
        return m.ln_final(x), eot

    def eot_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """Position of the token that represents the sentence, by the model's own pooling rule."""
        pool = getattr(self.model, "text_pool_type", "argmax")
        if pool == "argmax":
            return tokens.argmax(dim=-1)
        if pool == "eos":
            return (tokens == self.model.text_eos_id).int().argmax(dim=-1)
        if pool == "last":
            return torch.full(tokens.shape[:1], tokens.shape[1] - 1, dtype=torch.long, device=tokens.device)
        if pool == "first":
            return torch.zeros(tokens.shape[:1], dtype=torch.long, device=tokens.device)
        raise UserError(f"clip.model: text pooling '{pool}' has no single sentence token")

    def text_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token text features [B,L,text_width] and the EOT index [B].

        Features are taken after `ln_final` and before `text_projection`: the same space the sentence vector
        comes from (`encode_text(t) == feats[arange, eot] @ text_projection`), at the tower's full width, so
        consumers may learn their own projection. The tower is causal: positions after a sentence's EOT are
        padding — zero where the whole batch is past its EOT — and must be masked with the EOT index.
        """
        if not hasattr(self.model, "token_embedding"):
            raise UserError(f"clip.model: '{self.cfg.model}' has no open_clip text transformer "
                            "for token features")
        x, eot = self._text_forward(tokens)
        if x.shape[1] < tokens.shape[1]:
            x = F.pad(x, (0, 0, 0, tokens.shape[1] - x.shape[1]))
        return x, eot

    def checkpoint_hash(self) -> str:
        """sha256 of the weights file when loaded from one; otherwise of the state_dict."""
        return file_hash(self.weights_file) if self.weights_file else state_dict_hash(self.model)
