"""Encoders: the open_clip wrapper (weights, tokenizer, frame transform) and the LaViLa-style TimeSformer."""
from __future__ import annotations

import argparse
import fractions
import hashlib
import math
import pathlib
import time

import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU as ClipQuickGELU
from PIL import Image

from models.encoders import (
    LAVILA_MEAN,
    OPENAI_MEAN,
    ClipConfig,
    TimeSformer,
    TimeSformerConfig,
    VideoEncoder,
    build_clip,
    checkpoint_hash,
    inflate_from_clip,
    load_lavila_checkpoint,
    resize_temporal_embed,
)
from models.encoders.timesformer import DividedAttention
from vidmem.common import UserError
from vidmem.params import read

SOT, EOT = 49406, 49407


@pytest.fixture(scope="module")
def tiny():
    return build_clip(ClipConfig())


def _frames(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Smooth random uint8 frames [n,h,w,3] (a blurred field plus noise: resizing has something to do)."""
    g = torch.Generator().manual_seed(seed)
    small = torch.randint(0, 256, (n, 3, h // 8 + 1, w // 8 + 1), generator=g).float()
    x = torch.nn.functional.interpolate(small, size=(h, w), mode="bilinear")
    x = x + torch.randint(-20, 21, x.shape, generator=g)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _image_reference(visual, images: torch.Tensor, upto_block: int | None = None):
    """open_clip's ViT, pre-projection: (CLS after ln_post, all tokens after ln_post), or block-k tokens."""
    x = visual._embeds(images)
    if upto_block is not None:
        for blk in visual.transformer.resblocks[: upto_block + 1]:
            x = blk(x)
        return x
    x = visual.ln_post(visual.transformer(x))
    return x[:, 0], x


# ------------------------------------------------------------------------------------------------ open_clip
def test_random_init_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = build_clip(ClipConfig(seed=0))
    assert torch.equal(torch.rand(3), expected_next)  # building did not consume the global RNG
    b = build_clip(ClipConfig(seed=0))
    c = build_clip(ClipConfig(seed=1))
    assert checkpoint_hash(a) == checkpoint_hash(b) != checkpoint_hash(c)
    x = torch.randn(2, 3, 112, 112)
    with torch.inference_mode():
        assert torch.equal(a.encode_image(x), b.encode_image(x))


def test_tiny_config_shapes(tiny):
    assert (tiny.embed_dim, tiny.text_width, tiny.image_size, tiny.context_length) == (128, 128, 112, 77)
    with torch.inference_mode():
        out = tiny.encode_image(torch.randn(3, 3, 112, 112))
    assert out.shape == (3, 128) and torch.isfinite(out).all()


def test_local_file_round_trip(tiny, tmp_path):
    """A training-style checkpoint (state_dict under 'state_dict', DDP 'module.' prefix) loads identically."""
    path = tmp_path / "clip.pt"
    sd = {f"module.{k}": v for k, v in tiny.model.state_dict().items()}
    torch.save({"state_dict": sd, "epoch": 3, "params": {"lr": 1e-4},
                "args": argparse.Namespace(model="vidmem-tiny")}, path)
    loaded = build_clip(ClipConfig(pretrained=str(path), seed=99))
    x = torch.randn(2, 3, 112, 112)
    tok = tiny.tokenize(["a red circle moves left", "a blue square grows"])
    with torch.inference_mode():
        assert torch.equal(loaded.encode_image(x), tiny.encode_image(x))
        assert torch.equal(loaded.encode_text(tok), tiny.encode_text(tok))
    assert loaded.checkpoint_hash() == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not isinstance(loaded.model.visual.transformer.resblocks[0].mlp.gelu, ClipQuickGELU)


def test_local_file_that_does_not_fit_names_the_key(tiny, tmp_path):
    path = tmp_path / "broken.pt"
    sd = dict(tiny.model.state_dict())
    del sd["visual.ln_post.weight"]
    torch.save(sd, path)
    with pytest.raises(UserError, match=r"broken\.pt.*missing 1 key\(s\): visual\.ln_post\.weight"):
        build_clip(ClipConfig(pretrained=str(path)))
    with pytest.raises(UserError, match="weights file 'no/such/clip.pt' not found"):
        build_clip(ClipConfig(pretrained="no/such/clip.pt"))


def test_openai_torchscript_file_gets_quickgelu(tiny, tmp_path):
    """OpenAI's released files are TorchScript archives; their weights need QuickGELU (auto)."""
    path = tmp_path / "openai-style.pt"
    ref = build_clip(ClipConfig(quick_gelu=True))
    with pytest.warns(FutureWarning):
        torch.jit.script(ref.model).save(str(path))
    loaded = build_clip(ClipConfig(pretrained=str(path)))
    assert isinstance(loaded.model.visual.transformer.resblocks[0].mlp.gelu, ClipQuickGELU)
    x = torch.randn(2, 3, 112, 112)
    with torch.inference_mode():
        assert torch.equal(loaded.encode_image(x), ref.encode_image(x))


def test_tag_offline_fails_fast_and_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"'openai' weights for ViT-B-32.*local file"):
        build_clip(ClipConfig(model="ViT-B-32", pretrained="openai"))
    assert time.monotonic() - t0 < 30
    with pytest.raises(UserError, match=r"'nosuchtag' is neither.*tags: .*openai"):
        build_clip(ClipConfig(model="ViT-B-32", pretrained="nosuchtag"))
    with pytest.raises(UserError, match="not an open_clip config"):
        build_clip(ClipConfig(model="ViT-Q-99"))
    with pytest.raises(UserError, match=r"params.yaml clip.pretrainde: unknown key \(did you mean 'pretrained'"):
        read(ClipConfig, {"model": "ViT-B-32", "pretrainde": "openai"}, "clip")


def test_tokenizer_offline(tiny, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = tiny.tokenize(["a red circle moves left", "word " * 200])
    assert tok.shape == (2, 77) and tok.dtype == torch.long
    assert tok[0, 0] == SOT and tok[1, 0] == SOT
    eot = tiny.eot_index(tok)
    assert tok[0, eot[0]] == EOT and (tok[0, eot[0] + 1:] == 0).all()
    assert eot[1] == 76 and tok[1, 76] == EOT  # truncation forces EOT last


def test_text_tokens_are_pre_projection_features(tiny):
    tok = tiny.tokenize(["a red circle moves left", "two squares", "a star spins quickly"])
    with torch.inference_mode():
        feats, eot = tiny.text_tokens(tok)
        sent = tiny.encode_text(tok)
    assert feats.shape == (3, 77, tiny.text_width)
    assert torch.allclose(feats[torch.arange(3), eot] @ tiny.model.text_projection, sent, atol=1e-6)


def test_trimmed_text_forward_equals_open_clip_full_context(tiny):
    tok = tiny.tokenize(["a red circle moves left", "two squares", "a star spins quickly and then stops"])
    with torch.inference_mode():
        ours = tiny.encode_text(tok)
        full = tiny.model.encode_text(tok)  # open_clip: all 77 columns
        feats, eot = tiny.text_tokens(tok)
    assert torch.allclose(ours, full, atol=1e-5)
    assert not feats[:, int(eot.max()) + 1:].any()  # the all-padding tail is zero


def test_preprocess_portrait_and_landscape_match_open_clip_val_transform(tiny):
    val = open_clip.image_transform(224, is_train=False)  # open_clip's PIL val transform (OpenAI constants)
    from models.encoders import FrameTransform

    ours = FrameTransform(224)
    for h, w in [(240, 320), (320, 240), (224, 398), (100, 150)]:
        frames = _frames(2, h, w, seed=h)
        out = ours(frames)
        assert out.shape == (2, 3, 224, 224) and out.dtype == torch.float32
        assert torch.equal(out, ours(frames.permute(0, 3, 1, 2)))  # channels-first input, same result
        ref = torch.stack([val(Image.fromarray(f.numpy())) for f in frames])
        diff = (out - ref).abs()
        assert diff.mean() < 0.01 and diff.max() < 0.1, (h, w, diff.mean(), diff.max())
    tiny_out = tiny.preprocess(_frames(3, 320, 180).numpy())  # portrait, numpy from decord
    assert tiny_out.shape == (3, 3, 112, 112)
    with pytest.raises(ValueError, match="uint8"):
        tiny.preprocess(torch.zeros(1, 64, 64, 3))


# ---------------------------------------------------------------------------------------------- TimeSformer
def _naive_divided_attention(attn: DividedAttention, x: torch.Tensor, frames: int, over: str) -> torch.Tensor:
    """The attention pattern written out token by token, from the block description."""
    b, length, width = x.shape
    h, d, n = attn.heads, width // attn.heads, (length - 1) // frames
    q, k, v = attn.qkv(x).split(width, dim=-1)
    out = torch.zeros(b, length, width)

    def pos(f: int, p: int) -> int:
        return 1 + f * n + p

    for bi in range(b):
        for head in range(h):
            sl = slice(head * d, (head + 1) * d)
            for i in range(length):
                if i == 0:
                    keys = list(range(length))
                else:
                    f, p = divmod(i - 1, n)
                    if over == "space":
                        keys = [0] + [pos(f, pp) for pp in range(n)]
                    else:
                        keys = [0] + [pos(ff, p) for ff in range(frames)]
                scores = (k[bi, keys, sl] @ q[bi, i, sl]) / math.sqrt(d)
                out[bi, i, sl] = torch.softmax(scores, 0) @ v[bi, keys, sl]
    return attn.proj(out)


@pytest.mark.parametrize("over", ["space", "time"])
def test_divided_attention_pattern(over):
    torch.manual_seed(0)
    attn = DividedAttention(16, 2)
    x = torch.randn(2, 1 + 3 * 4, 16)
    with torch.no_grad():
        assert torch.allclose(attn(x, 3, over), _naive_divided_attention(attn, x, 3, over), atol=1e-5)


def _naive_timesformer(tsf: TimeSformer, video: torch.Tensor) -> torch.Tensor:
    """The forward pass written out from the architecture description, frame by frame and block by block."""
    b, t = video.shape[:2]
    p = tsf.cfg.patch_size
    temporal = resize_temporal_embed(tsf.temporal_embed, t) if t > tsf.cfg.num_frames else tsf.temporal_embed
    rows = []
    for bi in range(b):
        tokens = [tsf.cls_token[0, 0] + tsf.pos_embed[0, 0]]
        for f in range(t):
            for i in range(tsf.cfg.grid):
                for j in range(tsf.cfg.grid):
                    patch = video[bi, f, :, i * p:(i + 1) * p, j * p:(j + 1) * p]
                    emb = (tsf.patch_embed.proj.weight * patch).sum(dim=(1, 2, 3))
                    tokens.append(emb + tsf.pos_embed[0, 1 + i * tsf.cfg.grid + j] + temporal[0, f])
        rows.append(torch.stack(tokens))
    x = tsf.ln_pre(torch.stack(rows))
    for blk in tsf.blocks:
        x_t = x + _naive_divided_attention(blk.timeattn, blk.norm3(x), t, "time")
        x_s = x + _naive_divided_attention(blk.attn, blk.norm1(x_t), t, "space")
        x = x_s + blk.mlp(blk.norm2(x_s))
    return tsf.norm(x)[:, 0]


@pytest.mark.parametrize("frames", [3, 6])
def test_timesformer_matches_written_out_reference(frames):
    torch.manual_seed(0)
    cfg = TimeSformerConfig(image_size=32, patch_size=16, width=16, layers=2, heads=2, num_frames=4)
    tsf = TimeSformer(cfg)
    with torch.no_grad():
        for name, prm in tsf.named_parameters():
            if "timeattn" in name or name == "temporal_embed":
                prm.normal_(std=0.3)  # trained, not silent
    video = torch.randn(2, frames, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(tsf(video), _naive_timesformer(tsf, video), atol=1e-4)


def test_inflation_single_frame_identity(tiny):
    """Each frame fed as its own clip reproduces the image model's pre-projection CLS and tokens."""
    visual = tiny.model.visual
    tsf = inflate_from_clip(visual, num_frames=4)
    frames = tiny.preprocess(_frames(4, 224, 300, seed=1))  # four different frames
    with torch.inference_mode():
        cls_ref, tokens_ref = _image_reference(visual, frames)
        cls, tokens = tsf(frames[:, None], return_tokens=True)  # [4 clips, 1 frame]
    assert not torch.allclose(cls_ref[0], cls_ref[1], atol=1e-3)
    assert (cls - cls_ref).abs().max() < 1e-5
    assert (tokens - tokens_ref).abs().max() < 1e-5
    enc = VideoEncoder.from_clip(tiny)
    with torch.inference_mode():
        assert torch.allclose(enc.encode_video(frames[:, None]), tiny.encode_image(frames), atol=1e-5)
    assert enc.transform.mean == OPENAI_MEAN  # inflated CLIP → CLIP's normalisation


def test_inflation_multi_frame_time_attention_is_silent(tiny):
    """With 4 different frames: time attention adds exactly 0 and each frame's patches see only their frame
    (+ CLS), so block 0's patch tokens equal the image model's for that frame. The CLS reads all frames."""
    visual = tiny.model.visual
    tsf = inflate_from_clip(visual, num_frames=4)
    frames = tiny.preprocess(_frames(4, 240, 320, seed=2))
    outputs: list[torch.Tensor] = []
    hooks = [blk.timeattn.register_forward_hook(lambda m, i, o: outputs.append(o)) for blk in tsf.blocks]
    block0: list[torch.Tensor] = []
    hooks.append(tsf.blocks[0].register_forward_hook(lambda m, i, o: block0.append(o)))
    with torch.inference_mode():
        cls = tsf(frames[None])
        ref0 = _image_reference(visual, frames, upto_block=0)  # [4, 1+N, W]
    for h in hooks:
        h.remove()
    assert len(outputs) == len(tsf.blocks) and all(torch.equal(o, torch.zeros_like(o)) for o in outputs)
    assert all((blk.timeattn.proj.weight == 1).all() for blk in tsf.blocks)  # LaViLa's init: a gradient path
    n = tsf.cfg.patches_per_frame
    patches = block0[0][0, 1:].reshape(4, n, -1)
    assert (patches - ref0[:, 1:]).abs().max() < 1e-5
    assert cls.shape == (1, tsf.cfg.width) and torch.isfinite(cls).all()


def test_temporal_embed_interpolation_for_8_frames():
    embed = torch.randn(1, 4, 6)
    out = resize_temporal_embed(embed, 8)
    # bilinear with half-pixel centres: frame i of 8 samples source position clamp((i + 0.5) / 2 - 0.5, 0, 3)
    expected = torch.empty(1, 8, 6)
    for i in range(8):
        s = min(max((i + 0.5) * 4 / 8 - 0.5, 0.0), 3.0)
        lo = int(math.floor(s))
        hi = min(lo + 1, 3)
        expected[0, i] = embed[0, lo] * (1 - (s - lo)) + embed[0, hi] * (s - lo)
    assert torch.allclose(out, expected, atol=1e-6)

    cfg = TimeSformerConfig.tiny(num_frames=4)
    torch.manual_seed(0)
    four = TimeSformer(cfg).eval()
    with torch.no_grad():
        four.temporal_embed.normal_()
    eight = TimeSformer(TimeSformerConfig.tiny(num_frames=8)).eval()
    sd = four.state_dict()
    sd["temporal_embed"] = resize_temporal_embed(sd["temporal_embed"], 8)
    eight.load_state_dict(sd)
    video = torch.randn(1, 8, 3, 112, 112)
    with torch.inference_mode():  # 8 frames on the fly == a model built for 8 with interpolated embeddings
        assert torch.allclose(four(video), eight(video), atol=1e-5)


# ---------------------------------------------------------------------------------------------------- LaViLa
def _lavila_visual_shapes(width=768, layers=12, frames=4, grid=14, patch=16) -> dict[str, tuple[int, ...]]:
    """LaViLa's visual keys and shapes, written out from its published layout."""
    w = width
    shapes = {
        "cls_token": (1, 1, w), "pos_embed": (1, grid * grid + 1, w), "temporal_embed": (1, frames, w),
        "patch_embed.proj.weight": (w, 3, patch, patch),
        "ln_pre.weight": (w,), "ln_pre.bias": (w,), "norm.weight": (w,), "norm.bias": (w,),
    }
    per_block = {
        "norm1.weight": (w,), "norm1.bias": (w,),
        "attn.qkv.weight": (3 * w, w), "attn.qkv.bias": (3 * w,),
        "attn.proj.weight": (w, w), "attn.proj.bias": (w,),
        "timeattn.qkv.weight": (3 * w, w), "timeattn.qkv.bias": (3 * w,),
        "timeattn.proj.weight": (w, w), "timeattn.proj.bias": (w,),
        "norm2.weight": (w,), "norm2.bias": (w,),
        "mlp.fc1.weight": (4 * w, w), "mlp.fc1.bias": (4 * w,),
        "mlp.fc2.weight": (w, 4 * w), "mlp.fc2.bias": (w,),
        "norm3.weight": (w,), "norm3.bias": (w,),
    }
    for i in range(layers):
        shapes.update({f"blocks.{i}.{k}": s for k, s in per_block.items()})
    return shapes


def _write_lavila_checkpoint(path, shapes, embed_dim=256, text_width=512, drop=()):
    g = torch.Generator().manual_seed(0)
    sd = {f"module.visual.{k}": torch.randn(s, generator=g) for k, s in shapes.items() if k not in drop}
    width = shapes["cls_token"][-1]
    sd["module.image_projection"] = torch.randn(width, embed_dim, generator=g)
    sd["module.text_projection"] = torch.randn(text_width, embed_dim, generator=g)
    sd["module.logit_scale"] = torch.tensor(math.log(1 / 0.07))
    sd["module.positional_embedding"] = torch.randn(77, text_width, generator=g)
    sd["module.ln_final.weight"] = torch.ones(text_width)
    sd["module.ln_final.bias"] = torch.zeros(text_width)
    args = argparse.Namespace(model="CLIP_OPENAI_TIMESFORMER_BASE", num_frames=4, norm_embed=True, lr=3e-5,
                              output_dir=pathlib.Path("/runs/lavila"))
    torch.save({"state_dict": sd, "epoch": 5, "args": args}, path)
    return sd


def test_lavila_checkpoint_base_layout(tmp_path):
    shapes = _lavila_visual_shapes()
    assert len(shapes) == 8 + 12 * 18  # 224 visual tensors
    path = tmp_path / "clip_openai_timesformer_base.pth"
    sd = _write_lavila_checkpoint(path, shapes)
    tsf, proj = load_lavila_checkpoint(path)
    assert tsf.cfg == TimeSformerConfig.base()
    assert tsf.cfg.mean == LAVILA_MEAN and tsf.cfg.norm_eps == 1e-6 and tsf.cfg.quick_gelu
    loaded = tsf.state_dict()
    assert set(loaded) == set(shapes)
    for k in shapes:
        assert torch.equal(loaded[k], sd[f"module.visual.{k}"]), k
    assert torch.equal(proj, sd["module.image_projection"]) and proj.shape == (768, 256)
    assert type(tsf.blocks[0].mlp.act).__name__ == "QuickGELU" and tsf.blocks[0].norm1.eps == 1e-6


def test_inflated_vit_b16_has_lavila_layout():
    """Inflating open_clip's ViT-B-16 gives exactly LaViLa's visual keys and shapes (TSF-B starts from it)."""
    tsf = inflate_from_clip(build_clip(ClipConfig(model="ViT-B-16")).model.visual)
    sd, ref = tsf.state_dict(), _lavila_visual_shapes()
    assert set(sd) == set(ref) and all(tuple(sd[k].shape) == ref[k] for k in ref)
    assert (tsf.cfg.width, tsf.cfg.layers, tsf.cfg.heads, tsf.cfg.num_frames) == (768, 12, 12, 4)


def test_lavila_checkpoint_errors_name_the_key(tmp_path):
    shapes = _lavila_visual_shapes(width=64, layers=2, grid=7)
    path = tmp_path / "missing.pth"
    _write_lavila_checkpoint(path, shapes, embed_dim=32, drop=("blocks.1.timeattn.proj.bias",))
    expected = r"missing\.pth.*missing 1: module\.visual\.blocks\.1\.timeattn\.proj\.bias"
    with pytest.raises(UserError, match=expected):
        load_lavila_checkpoint(path)

    path = tmp_path / "extra.pth"
    sd = _write_lavila_checkpoint(path, shapes, embed_dim=32)
    sd["module.visual.head.weight"] = torch.zeros(10, 64)
    torch.save({"state_dict": sd}, path)
    with pytest.raises(UserError, match=r"unexpected 1: module\.visual\.head\.weight"):
        load_lavila_checkpoint(path)

    del sd["module.visual.head.weight"]
    sd["module.visual.blocks.0.mlp.fc2.bias"] = torch.zeros(65)
    torch.save(sd, path)  # a bare state_dict is accepted too
    with pytest.raises(UserError, match=r"blocks\.0\.mlp\.fc2\.bias has shape \(65,\), expected \(64,\)"):
        load_lavila_checkpoint(path)

    torch.save({"state_dict": sd, "args": argparse.Namespace(ratio=fractions.Fraction(1, 3))}, path)
    with pytest.raises(UserError, match=r"extra\.pth: not a checkpoint .*it pickles fractions\.Fraction"):
        load_lavila_checkpoint(path)

    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"extra\.pth: not a checkpoint"):
        load_lavila_checkpoint(path)


def test_lavila_round_trip_and_frame_counts(tmp_path):
    """Our VideoEncoder saved in LaViLa's layout loads back identically; 8 frames interpolate, 2 truncate."""
    torch.manual_seed(0)
    # LaViLa's conventions (eps 1e-6, QuickGELU), as a real checkpoint would have
    tsf = TimeSformer(TimeSformerConfig(image_size=112, width=192, layers=2, heads=3, embed_dim=128))
    for blk in tsf.blocks:  # a trained model: time attention no longer silent
        torch.nn.init.normal_(blk.timeattn.qkv.weight, std=0.05)
        torch.nn.init.normal_(blk.timeattn.proj.weight, std=0.05)
    with torch.no_grad():
        tsf.temporal_embed.normal_(std=0.1)
    enc = VideoEncoder(tsf.eval(), torch.randn(192, 128))
    path = tmp_path / "lavila_tiny.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in enc.state_dict().items()}, "epoch": 1}, path)

    back = VideoEncoder.from_lavila(path)
    assert back.transform.mean == LAVILA_MEAN and back.transform.interpolation == "bilinear"
    video = back.preprocess(_frames(8, 240, 320, seed=3).reshape(2, 4, 240, 320, 3))
    assert video.shape == (2, 4, 3, 112, 112)
    with torch.inference_mode():
        assert torch.equal(back.encode_video(video), enc.encode_video(video))
        long = torch.cat([video, video.flip(1)], dim=1)  # 8 frames
        eight = VideoEncoder.from_lavila(path, num_frames=8)
        assert torch.allclose(eight(long), enc(long), atol=1e-5)
        two = VideoEncoder.from_lavila(path, num_frames=2)
        assert torch.allclose(two(video[:, :2]), enc(video[:, :2]), atol=1e-5)


def test_log_says_what_weights_are_loaded(tmp_path, caplog):
    """open_clip's "initialized randomly" warning must not appear when a weights file is loaded right after."""
    import logging

    path = tmp_path / "w.pt"
    torch.save({"state_dict": build_clip(ClipConfig()).model.state_dict()}, path)
    with caplog.at_level(logging.INFO):
        build_clip(ClipConfig(pretrained=str(path)))
    assert "No pretrained weights loaded" not in caplog.text and f"weights from {path}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        build_clip(ClipConfig())
    assert "random initialisation (seed 0)" in caplog.text
