"""LaViLa-style TimeSformer: a CLIP ViT with divided space-time attention (Frozen-in-Time block).

    tokens  = [CLS + pos[0]] ++ [patch(f, p) + pos[1 + p] + temporal[f]]     frame-major, then ln_pre
    block:  x_t = x + TimeAttn(norm3(x))        a patch attends over its own position in every frame (+ CLS)
            x_s = x + SpaceAttn(norm1(x_t))     a patch attends within its frame (+ CLS); residual to x
            out = x_s + MLP(norm2(x_s))
    output  = norm(tokens)[:, 0]                one CLS token; its query attends to every token of every frame

Parameter names are LaViLa's (`cls_token`, `pos_embed`, `temporal_embed`, `patch_embed.proj`, `ln_pre`,
`blocks.i.{norm1, attn, timeattn, norm2, mlp, norm3}`, `norm`), so its dual-encoder checkpoints load as they
are. Two ways to get weights:

* `inflate_from_clip(visual)`: copy an open_clip ViT; time attention starts silent (qkv = 0, so it outputs
  exactly 0; proj weight = 1 as LaViLa does, so gradients can move it), temporal embeddings start at 0.
  What then holds exactly: a clip of one frame gives the image model's CLS (after ln_post, before
  projection) and tokens, so every frame fed as its own clip reproduces the image model. With T > 1 frames
  the time attention still adds exactly 0 and each frame's patches see only their own frame and the CLS,
  but the single CLS attends to all frames' patches at once, so the CLS is a joint view of the clip and
  equals no single frame's CLS (not even for T copies of one frame: each key then appears T times).
* `load_lavila_checkpoint(path)`: a LaViLa dual-encoder checkpoint (`module.visual.*`,
  `module.image_projection`).

Frame counts: T <= num_frames uses the first T temporal embeddings (LaViLa's forward); T > num_frames
interpolates them bilinearly (LaViLa's loader for more frames).
"""
from __future__ import annotations

import logging
import math
import os
import pickle
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vidmem.common import UserError

from .frames import LAVILA_MEAN, LAVILA_STD, OPENAI_MEAN, OPENAI_STD, FrameTransform
from .weights import load_failure, safe_globals

log = logging.getLogger(__name__)


@dataclass
class TimeSformerConfig:
    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    num_frames: int = 4
    embed_dim: int = 256              # the dual-encoder space that image_projection maps to
    quick_gelu: bool = True
    norm_eps: float = 1e-6            # blocks and final norm (LaViLa); an inflated CLIP keeps CLIP's 1e-5
    ln_pre_eps: float = 1e-5
    # preprocessing follows the weights: LaViLa's constants for its checkpoints, CLIP's for an inflated CLIP
    mean: tuple[float, float, float] = LAVILA_MEAN
    std: tuple[float, float, float] = LAVILA_STD
    interpolation: str = "bilinear"
    antialias: bool = False

    @classmethod
    def base(cls, **kw) -> TimeSformerConfig:
        """LaViLa's TSF-B (CLIP_OPENAI_TIMESFORMER_BASE): ViT-B/16 at 224 px, 4 frames, 256-d projection."""
        return cls(**kw)

    @classmethod
    def tiny(cls, **kw) -> TimeSformerConfig:
        """The shape of the inflated `vidmem-tiny` CLIP: fast on 2 CPU cores."""
        kw = {"image_size": 112, "patch_size": 16, "width": 192, "layers": 4, "heads": 3, "embed_dim": 128,
              "quick_gelu": False, "norm_eps": 1e-5, "mean": OPENAI_MEAN, "std": OPENAI_STD,
              "interpolation": "bicubic", "antialias": True} | kw
        return cls(**kw)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def patches_per_frame(self) -> int:
        return self.grid * self.grid

    def transform(self) -> FrameTransform:
        return FrameTransform(self.image_size, tuple(self.mean), tuple(self.std), self.interpolation,
                              self.antialias)


# ---------------------------------------------------------------------------------------------------- modules
class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int, quick_gelu: bool):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = QuickGELU() if quick_gelu else nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PatchEmbed(nn.Module):
    """Per-frame patch projection, no bias (CLIP's conv1; ln_pre follows)."""

    def __init__(self, patch_size: int, width: int):
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """[N,3,H,W] → [N, patches, width] in raster order."""
        return self.proj(frames).flatten(2).transpose(1, 2)


class DividedAttention(nn.Module):
    """Multi-head attention over either space or time; the CLS query always attends to every token.

    Patch queries are grouped by frame ("space": a group is one frame's patches) or by patch position
    ("time": a group is one position across frames); the CLS key/value joins every group.
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, frames: int, over: str) -> torch.Tensor:
        b, length, width = x.shape
        h, d = self.heads, width // self.heads
        n = (length - 1) // frames
        q, k, v = self.qkv(x).view(b, length, 3, h, d).permute(2, 0, 3, 1, 4)  # each [B,h,L,d]

        cls_out = F.scaled_dot_product_attention(q[:, :, :1], k, v)  # [B,h,1,d]

        def group(t: torch.Tensor) -> torch.Tensor:  # [B,h,T*N,d] → [B*G, h, S, d]
            t = t.reshape(b, h, frames, n, d)
            t = t.permute(0, 2, 1, 3, 4) if over == "space" else t.permute(0, 3, 1, 2, 4)
            return t.reshape(-1, h, t.shape[3], d)

        groups = frames if over == "space" else n
        qg, kg, vg = (group(t[:, :, 1:]) for t in (q, k, v))
        cls_k = k[:, :, :1].unsqueeze(1).expand(b, groups, h, 1, d).reshape(-1, h, 1, d)
        cls_v = v[:, :, :1].unsqueeze(1).expand(b, groups, h, 1, d).reshape(-1, h, 1, d)
        out = F.scaled_dot_product_attention(qg, torch.cat([cls_k, kg], 2), torch.cat([cls_v, vg], 2))

        if over == "space":  # [B*T, h, N, d] → [B, h, T*N, d]
            out = out.reshape(b, frames, h, n, d).permute(0, 2, 1, 3, 4)
        else:  # [B*N, h, T, d] → [B, h, T*N, d]
            out = out.reshape(b, n, h, frames, d).permute(0, 2, 3, 1, 4)
        out = torch.cat([cls_out, out.reshape(b, h, frames * n, d)], dim=2)
        return self.proj(out.transpose(1, 2).reshape(b, length, width))

    @torch.no_grad()
    def silence(self) -> None:
        """LaViLa's 'zeros' time init: q = k = v = 0 so the output is exactly 0; proj = 1 keeps a gradient."""
        self.qkv.weight.zero_()
        self.qkv.bias.zero_()
        self.proj.weight.fill_(1.0)
        self.proj.bias.zero_()


class SpaceTimeBlock(nn.Module):
    def __init__(self, cfg: TimeSformerConfig):
        super().__init__()
        w = cfg.width
        self.norm1 = nn.LayerNorm(w, eps=cfg.norm_eps)
        self.attn = DividedAttention(w, cfg.heads)
        self.timeattn = DividedAttention(w, cfg.heads)
        self.norm2 = nn.LayerNorm(w, eps=cfg.norm_eps)
        self.mlp = Mlp(w, int(w * cfg.mlp_ratio), cfg.quick_gelu)
        self.norm3 = nn.LayerNorm(w, eps=cfg.norm_eps)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        x_t = x + self.timeattn(self.norm3(x), frames, "time")
        x_s = x + self.attn(self.norm1(x_t), frames, "space")  # residual to the block input
        return x_s + self.mlp(self.norm2(x_s))


def resize_temporal_embed(embed: torch.Tensor, frames: int) -> torch.Tensor:
    """[1,F,W] → [1,frames,W] by bilinear interpolation along time (LaViLa's fix for more frames)."""
    if embed.shape[1] == frames:
        return embed
    return F.interpolate(embed.unsqueeze(0), size=(frames, embed.shape[2]), mode="bilinear",
                         align_corners=False).squeeze(0)


class TimeSformer(nn.Module):
    """Video [B,T,3,H,W] → CLS [B,width] (after the final norm, before image_projection)."""

    def __init__(self, cfg: TimeSformerConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.patch_embed = PatchEmbed(cfg.patch_size, w)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, w))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.patches_per_frame + 1, w))
        self.temporal_embed = nn.Parameter(torch.zeros(1, cfg.num_frames, w))
        self.ln_pre = nn.LayerNorm(w, eps=cfg.ln_pre_eps)
        self.blocks = nn.ModuleList(SpaceTimeBlock(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(w, eps=cfg.norm_eps)
        self.grad_checkpointing = False
        if not self.cls_token.is_meta:
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.temporal_embed.zero_()
        for blk in self.blocks:
            blk.timeattn.silence()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def temporal(self, frames: int) -> torch.Tensor:
        if frames <= self.cfg.num_frames:
            return self.temporal_embed[:, :frames]
        return resize_temporal_embed(self.temporal_embed, frames)

    def embed(self, video: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = video.shape
        if c != 3 or h != self.cfg.image_size or w != self.cfg.image_size:
            raise ValueError(f"video must be [B,T,3,{self.cfg.image_size},{self.cfg.image_size}], "
                             f"got {tuple(video.shape)}")
        x = self.patch_embed(video.reshape(b * t, c, h, w).to(self.cls_token.dtype))
        n = x.shape[1]
        x = x.reshape(b, t * n, -1)
        pos = self.pos_embed[:, 1:].repeat(1, t, 1) + self.temporal(t).repeat_interleave(n, dim=1)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(b, -1, -1)
        return self.ln_pre(torch.cat([cls, x + pos], dim=1))

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm: [B, 1 + T*patches, width], CLS first, frame-major."""
        t = video.shape[1]
        x = self.embed(video)
        for blk in self.blocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(blk, x, t, use_reentrant=False)
            else:
                x = blk(x, t)
        return self.norm(x)

    def forward(self, video: torch.Tensor, return_tokens: bool = False):
        """CLS [B,width]; with `return_tokens`, also every token [B, 1 + T*patches, width]."""
        tokens = self.forward_features(video)
        return (tokens[:, 0], tokens) if return_tokens else tokens[:, 0]


# ---------------------------------------------------------------------------------------------------- CLIP
def clip_key_map(layers: int) -> dict[str, str]:
    """open_clip ViT state_dict key → TimeSformer key (CLIP's `proj` goes to image_projection instead)."""
    m = {
        "class_embedding": "cls_token",
        "positional_embedding": "pos_embed",
        "conv1.weight": "patch_embed.proj.weight",
        "ln_pre.weight": "ln_pre.weight",
        "ln_pre.bias": "ln_pre.bias",
        "ln_post.weight": "norm.weight",
        "ln_post.bias": "norm.bias",
    }
    pairs = [("attn.in_proj_weight", "attn.qkv.weight"), ("attn.in_proj_bias", "attn.qkv.bias"),
             ("attn.out_proj.weight", "attn.proj.weight"), ("attn.out_proj.bias", "attn.proj.bias"),
             ("ln_1.weight", "norm1.weight"), ("ln_1.bias", "norm1.bias"),
             ("ln_2.weight", "norm2.weight"), ("ln_2.bias", "norm2.bias"),
             ("mlp.c_fc.weight", "mlp.fc1.weight"), ("mlp.c_fc.bias", "mlp.fc1.bias"),
             ("mlp.c_proj.weight", "mlp.fc2.weight"), ("mlp.c_proj.bias", "mlp.fc2.bias")]
    for i in range(layers):
        for src, dst in pairs:
            m[f"transformer.resblocks.{i}.{src}"] = f"blocks.{i}.{dst}"
    return m


def _check_inflatable(visual: nn.Module) -> None:
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    problems = []
    if not isinstance(visual, VisionTransformer):
        problems.append(f"the vision tower is {type(visual).__name__}, not an open_clip VisionTransformer")
    else:
        if visual.attn_pool is not None or visual.pool_type != "tok" or visual.final_ln_after_pool:
            problems.append("it pools with something other than the CLS token after ln_post")
        if isinstance(visual.ln_pre, nn.Identity):
            problems.append("it has no ln_pre")
        if visual.image_size[0] != visual.image_size[1] or visual.patch_size[0] != visual.patch_size[1]:
            problems.append("its input or patches are not square")
        for blk in visual.transformer.resblocks:
            if not isinstance(blk, ResidualAttentionBlock) or not isinstance(blk.ls_1, nn.Identity) \
                    or blk.attn.in_proj_bias is None:
                problems.append("its blocks are not plain CLIP blocks (layer scale, custom attention)")
                break
    if problems:
        raise UserError("cannot inflate this CLIP vision tower into a TimeSformer: " + "; ".join(problems))


def config_from_clip(visual: nn.Module, num_frames: int = 4,
                     norm_eps: float | None = None) -> TimeSformerConfig:
    """The TimeSformer shape of an open_clip ViT; eps follows CLIP's (so inflation is exact) unless given."""
    from open_clip.transformer import QuickGELU as ClipQuickGELU

    _check_inflatable(visual)
    blk = visual.transformer.resblocks[0]
    pp = getattr(visual, "preprocess_cfg", {}) or {}
    return TimeSformerConfig(
        image_size=visual.image_size[0],
        patch_size=visual.patch_size[0],
        width=visual.transformer.width,
        layers=len(visual.transformer.resblocks),
        heads=blk.attn.num_heads,
        mlp_ratio=blk.mlp.c_fc.out_features / visual.transformer.width,
        num_frames=num_frames,
        embed_dim=visual.proj.shape[1],
        quick_gelu=isinstance(blk.mlp.gelu, ClipQuickGELU),
        norm_eps=blk.ln_1.eps if norm_eps is None else norm_eps,
        ln_pre_eps=visual.ln_pre.eps,
        mean=tuple(pp.get("mean", OPENAI_MEAN)),
        std=tuple(pp.get("std", OPENAI_STD)),
        interpolation=pp.get("interpolation", "bicubic"),
        antialias=True,
    )


@torch.no_grad()
def inflate_from_clip(visual: nn.Module, num_frames: int = 4, norm_eps: float | None = None) -> TimeSformer:
    """A TimeSformer that starts as the given open_clip ViT (see the module docstring for what holds)."""
    cfg = config_from_clip(visual, num_frames, norm_eps)
    src = visual.state_dict()
    model = TimeSformer(cfg).to(device=visual.conv1.weight.device, dtype=visual.conv1.weight.dtype)
    dst = model.state_dict()
    for skey, dkey in clip_key_map(cfg.layers).items():
        dst[dkey].copy_(src[skey].reshape(dst[dkey].shape))
    model.temporal_embed.zero_()
    for blk in model.blocks:
        blk.timeattn.silence()
        blk.norm3.reset_parameters()
    return model.eval()


# ---------------------------------------------------------------------------------------------------- LaViLa
LAVILA_PREFIX = "module."


def _load_torch_file(path: Path) -> object:
    """torch.load with weights_only; LaViLa's training runs pickle `args` as an argparse.Namespace."""
    try:
        with safe_globals():
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: checkpoint not found") from None
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, RuntimeError) as e:
        raise UserError(f"{path}: not a checkpoint torch can load safely: {load_failure(e)}") from None


def _block_indices(keys: Iterable[str]) -> set[int]:
    out = set()
    for k in keys:
        parts = k.split(".")
        if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit():
            out.add(int(parts[1]))
    return out


def config_from_lavila(visual: dict[str, torch.Tensor], projection: torch.Tensor, path: Path,
                       **overrides) -> TimeSformerConfig:
    """Shapes → config. Heads cannot be read from shapes: width // 64 (LaViLa's 12 for 768) unless given."""
    need = ("cls_token", "pos_embed", "temporal_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight")
    missing = [k for k in need if k not in visual]
    if missing:
        raise UserError(f"{path}: not a LaViLa TimeSformer checkpoint: missing "
                        + ", ".join(f"{LAVILA_PREFIX}visual.{k}" for k in missing))
    width = visual["cls_token"].shape[-1]
    patch = visual["patch_embed.proj.weight"].shape[-1]
    grid = math.isqrt(visual["pos_embed"].shape[1] - 1)
    if grid * grid != visual["pos_embed"].shape[1] - 1:
        raise UserError(f"{path}: {LAVILA_PREFIX}visual.pos_embed has {visual['pos_embed'].shape[1] - 1} "
                        "patches, not a square grid")
    kw = dict(image_size=grid * patch, patch_size=patch, width=width, layers=len(_block_indices(visual)),
              heads=max(1, width // 64), mlp_ratio=visual["blocks.0.mlp.fc1.weight"].shape[0] / width,
              num_frames=visual["temporal_embed"].shape[1], embed_dim=projection.shape[1])
    return TimeSformerConfig(**(kw | overrides))


def load_lavila_checkpoint(path: str | os.PathLike, num_frames: int | None = None,
                           **overrides) -> tuple[TimeSformer, nn.Parameter]:
    """A LaViLa dual-encoder checkpoint → (TimeSformer, image_projection [width, embed_dim]).

    Accepts `torch.save({'state_dict': {...}, 'epoch': ..., 'args': Namespace(...)})` or a bare state_dict,
    keys with or without `module.`; every `visual.*` tensor must match the model exactly (strict), text-tower
    keys are ignored. `num_frames` other than the checkpoint's: fewer keep the first temporal embeddings,
    more interpolate them bilinearly. `overrides` set config fields shapes cannot tell (heads, quick_gelu).
    """
    path = Path(path)
    ckpt = _load_torch_file(path)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a dict with a 'state_dict', got {type(ckpt).__name__}")
    state = {(k[len(LAVILA_PREFIX):] if k.startswith(LAVILA_PREFIX) else k): v for k, v in state.items()}
    visual = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    if "image_projection" not in state:
        raise UserError(f"{path}: missing {LAVILA_PREFIX}image_projection "
                        "(not a LaViLa dual-encoder checkpoint)")
    projection = state["image_projection"]

    cfg = config_from_lavila(visual, projection, path, **overrides)
    with torch.device("meta"):
        model = TimeSformer(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(visual))
    unexpected = sorted(set(visual) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: "
                         + ", ".join(f"{LAVILA_PREFIX}visual.{k}" for k in missing[:5]))
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: "
                         + ", ".join(f"{LAVILA_PREFIX}visual.{k}" for k in unexpected[:5]))
        raise UserError(f"{path}: visual keys do not match a {cfg.layers}-layer TimeSformer: "
                        + "; ".join(parts))
    for k, t in expected.items():
        if tuple(visual[k].shape) != tuple(t.shape):
            raise UserError(f"{path}: {LAVILA_PREFIX}visual.{k} has shape {tuple(visual[k].shape)}, "
                            f"expected {tuple(t.shape)}")
    if projection.ndim != 2 or projection.shape[0] != cfg.width:
        raise UserError(f"{path}: {LAVILA_PREFIX}image_projection has shape {tuple(projection.shape)}, "
                        f"expected ({cfg.width}, embed_dim)")

    tensors = {k: v.float() for k, v in visual.items()}
    if num_frames is not None and num_frames != cfg.num_frames:
        te = tensors["temporal_embed"]
        tensors["temporal_embed"] = te[:, :num_frames] if num_frames < te.shape[1] else resize_temporal_embed(
            te, num_frames)
        cfg = replace(cfg, num_frames=num_frames)
        with torch.device("meta"):
            model = TimeSformer(cfg)
    model.load_state_dict(tensors, strict=True, assign=True)
    log.info("loaded LaViLa TimeSformer from %s: %d visual tensors, %d frames, width %d → %d",
             path, len(tensors), cfg.num_frames, cfg.width, cfg.embed_dim)
    return model.eval(), nn.Parameter(projection.float().clone(), requires_grad=False)


# ---------------------------------------------------------------------------------------------------- wrapper
class VideoEncoder(nn.Module):
    """TimeSformer + image_projection + the preprocessing its weights expect (LaViLa's keys, no `module.`)."""

    def __init__(self, visual: TimeSformer, image_projection: torch.Tensor):
        super().__init__()
        self.visual = visual
        self.image_projection = nn.Parameter(image_projection.detach().clone(),
                                             requires_grad=image_projection.requires_grad)
        self.transform = visual.cfg.transform()

    @classmethod
    def from_lavila(cls, path: str | os.PathLike, num_frames: int | None = None, **overrides) -> VideoEncoder:
        return cls(*load_lavila_checkpoint(path, num_frames, **overrides))

    @classmethod
    def from_clip(cls, clip: nn.Module, num_frames: int = 4) -> VideoEncoder:
        """Inflate a `ClipEncoder` (or an open_clip CLIP) — CLIP's `proj` becomes image_projection."""
        model = getattr(clip, "model", clip)
        visual = model.visual
        return cls(inflate_from_clip(visual, num_frames), visual.proj.detach())

    @property
    def embed_dim(self) -> int:
        return int(self.image_projection.shape[1])

    def preprocess(self, video: torch.Tensor) -> torch.Tensor:
        """uint8 [B,T,H,W,3] or [B,T,3,H,W] → normalised float32 [B,T,3,S,S]."""
        b, t = video.shape[:2]
        x = self.transform(video.reshape(b * t, *video.shape[2:]))
        return x.reshape(b, t, *x.shape[1:])

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Preprocessed video [B,T,3,S,S] → CLS [B,width] (what ReCap stores per 4-s window)."""
        return self.visual(video)

    def encode_video(self, video: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Preprocessed video → the dual-encoder embedding [B,embed_dim]."""
        x = self.visual(video) @ self.image_projection
        return F.normalize(x, dim=-1) if normalize else x
