"""DINOv3 ViT weights in the timm and HF transformers layouts load to the official model's outputs.

Each foreign layout is built here by hand from a golden (official-layout) state dict, as timm's
and transformers' converters write it; the timm copy is also loaded strictly into timm's own
``Eva`` to prove it is the real timm layout. A v2 file with a v3 architecture (and the reverse)
is a WeightsMismatchError naming the keys.
"""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file

import dinofeat
from dinofeat.models import arch_from_dict, build_backbone
from dinofeat.models.dinov3.rope import released_periods
from tests.helpers.common import shared_path
from tests.helpers.dinov3 import golden_arch

TOL = 1e-5
TRAINING_ONLY = ("mask_token", "rope_embed.periods")


@pytest.fixture(scope="module")
def golden3():
    return shared_path("golden", "dinov3")


def _official(golden3, name):
    return torch.load(golden3 / f"{name}.pth", weights_only=True)


def _reference(state, kwargs, zero_qkv_bias=False):
    """The official model on ``state`` with the periods a timm / HF file implies (the released bf16 ones)."""
    arch = arch_from_dict(kwargs)
    state = dict(state)
    state["rope_embed.periods"] = released_periods(arch.head_dim)
    if zero_qkv_bias:
        state = {k: torch.zeros_like(v) if k.endswith("qkv.bias") else v for k, v in state.items()}
    model = build_backbone(arch).eval()
    model.load_state_dict(state, strict=True)
    return model, state


def official_to_timm(state, swiglu, q_v_bias):
    """What timm's ``checkpoint_filter_fn`` makes of an official file (``_qkvb`` models keep q / v biases)."""
    out = {}
    for key, value in state.items():
        if key in TRAINING_ONLY or key.endswith(".bias_mask") or key.startswith("local_cls_norm."):
            continue
        if key.endswith("attn.qkv.bias"):
            if q_v_bias:
                dim = value.numel() // 3
                out[key.replace("qkv.bias", "q_bias")] = value[:dim]
                out[key.replace("qkv.bias", "v_bias")] = value[2 * dim:]
            continue
        key = key.replace("storage_tokens", "reg_token").replace("ls1.gamma", "gamma_1")
        key = key.replace("ls2.gamma", "gamma_2")
        if swiglu:
            key = key.replace("mlp.w1.", "mlp.fc1_g.").replace("mlp.w2.", "mlp.fc1_x.")
            key = key.replace("mlp.w3.", "mlp.fc2.")
        out[key] = value
    return out


def official_to_transformers(state, swiglu):
    """The ``DINOv3ViTModel`` Hub layout (``layer.N``; no key bias, no periods, no bias mask)."""
    out = {}
    for key, value in state.items():
        if key == "rope_embed.periods" or key.endswith(".bias_mask") or key.startswith("local_cls_norm."):
            continue
        if key.endswith("attn.qkv.weight") or key.endswith("attn.qkv.bias"):
            param = key.rsplit(".", 1)[1]
            base = key.split(".attn.")[0].replace("blocks.", "layer.")
            for part, chunk in zip("qkv", value.chunk(3), strict=True):
                if not (part == "k" and param == "bias"):
                    out[f"{base}.attention.{part}_proj.{param}"] = chunk
            continue
        key = {"cls_token": "embeddings.cls_token", "storage_tokens": "embeddings.register_tokens",
               "mask_token": "embeddings.mask_token"}.get(key, key)
        key = key.replace("patch_embed.proj.", "embeddings.patch_embeddings.").replace("blocks.", "layer.")
        key = key.replace("attn.proj.", "attention.o_proj.").replace("ls1.gamma", "layer_scale1.lambda1")
        key = key.replace("ls2.gamma", "layer_scale2.lambda1")
        if swiglu:
            key = key.replace("mlp.w1.", "mlp.gate_proj.").replace("mlp.w2.", "mlp.up_proj.")
            key = key.replace("mlp.w3.", "mlp.down_proj.")
        else:
            key = key.replace("mlp.fc1.", "mlp.up_proj.").replace("mlp.fc2.", "mlp.down_proj.")
        out[key] = value.reshape(1, 1, -1) if key == "embeddings.mask_token" else value
    return out


def _timm_eva(name, kwargs, q_v_bias):
    variant = {"v3_mlp": "vit_small_patch16_dinov3", "v3_swiglu": "vit_small_plus_patch16_dinov3"}[name]
    return timm.create_model(variant + ("_qkvb" if q_v_bias else ""), pretrained=False, num_classes=0,
                             embed_dim=kwargs["embed_dim"], depth=kwargs["depth"],
                             num_heads=kwargs["num_heads"]).eval()


@pytest.mark.parametrize("name", ["v3_mlp", "v3_swiglu"])
@pytest.mark.parametrize("q_v_bias", [True, False])
def test_timm_layout_loads_to_the_official_outputs(golden3, tmp_path, name, q_v_bias):
    official = _official(golden3, name)
    reference, reference_state = _reference(official, golden_arch(name), zero_qkv_bias=not q_v_bias)
    timm_state = official_to_timm(reference_state, swiglu=name == "v3_swiglu", q_v_bias=q_v_bias)
    eva = _timm_eva(name, golden_arch(name), q_v_bias)
    eva.load_state_dict(timm_state, strict=True)  # it is timm's own layout
    save_file({k: v.contiguous() for k, v in timm_state.items()}, tmp_path / "model.safetensors")
    model = dinofeat.load(tmp_path / "model.safetensors", arch=golden_arch(name), device="cpu")
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ours = model.backbone.forward_tokens(x, cls_attention=True, blocks=[0])
        expected = reference.forward_tokens(x, cls_attention=True, blocks=[0])
        eva.rope.periods.copy_(released_periods(reference.config.head_dim))
        timm_tokens = eva.forward_features(x)
    assert (ours.tokens - expected.tokens).abs().max() <= TOL
    assert (ours.cls_attention - expected.cls_attention).abs().max() <= TOL
    assert (ours.intermediates[0] - expected.intermediates[0]).abs().max() <= TOL
    assert (timm_tokens - expected.tokens).abs().max() <= TOL  # timm with the released periods agrees


@pytest.mark.parametrize("name", ["v3_mlp", "v3_swiglu", "v3_7b_like"])
def test_transformers_folder_loads_to_the_official_outputs(golden3, tmp_path, name):
    # transformers has neither cls_norm nor local_cls_norm: compare with the tied official variant
    official = {k: v for k, v in _official(golden3, name).items()
                if not k.startswith(("cls_norm.", "local_cls_norm."))}
    kwargs = {**golden_arch(name), "untie_cls_and_patch_norms": False,
              "untie_global_and_local_cls_norm": False}
    arch = arch_from_dict(kwargs)
    reference, reference_state = _reference(official, kwargs)
    swiglu = arch.ffn_layer != "mlp"
    hidden = reference_state["blocks.0.mlp.w1.weight" if swiglu else "blocks.0.mlp.fc1.weight"].shape[0]
    config = {"model_type": "dinov3_vit", "hidden_size": arch.embed_dim, "intermediate_size": hidden,
              "num_hidden_layers": arch.depth, "num_attention_heads": arch.num_heads, "patch_size": 16,
              "num_register_tokens": arch.n_storage_tokens, "use_gated_mlp": swiglu, "layerscale_value": 1e-5,
              "layer_norm_eps": 1e-5, "rope_theta": 100.0, "query_bias": arch.qkv_bias, "key_bias": False,
              "value_bias": arch.qkv_bias, "pos_embed_rescale": 2.0,
              "hidden_act": "silu" if swiglu else "gelu"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in official_to_transformers(reference_state, swiglu).items()},
              tmp_path / "model.safetensors")
    model = dinofeat.load(tmp_path, device="cpu")
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        ours = model.backbone.forward_tokens(x, cls_attention=True)
        expected = reference.forward_tokens(x, cls_attention=True)
    assert (ours.tokens - expected.tokens).abs().max() <= TOL
    assert (ours.cls_attention - expected.cls_attention).abs().max() <= TOL


@pytest.mark.parametrize("layout", ["timm", "official"])
def test_v2_weights_with_a_v3_arch_and_the_reverse_name_the_keys(golden3, tmp_path, layout):
    v2 = build_backbone(arch_from_dict({"patch_size": 16, "embed_dim": 64, "depth": 3, "num_heads": 4,
                                        "num_register_tokens": 4, "layer_scale_init": 1e-5}))
    state = dict(v2.state_dict())
    if layout == "official":  # the official DINOv2 names
        state["register_tokens"] = state.pop("reg_token")
        state["mask_token"] = torch.zeros(1, 64)
    torch.save(state, tmp_path / "dinov2_like.pth")
    with pytest.raises(dinofeat.WeightsMismatchError) as info:
        dinofeat.load(tmp_path / "dinov2_like.pth", arch=golden_arch("v3_mlp"))
    message = str(info.value)
    assert "missing keys" in message and "rope_embed.periods" in message and "storage_tokens" in message
    assert "unexpected keys" in message and "pos_embed" in message and "not DINOv3" in message
    with pytest.raises(dinofeat.WeightsMismatchError) as info:
        dinofeat.load(golden3 / "v3_mlp.pth", arch={"patch_size": 16, "embed_dim": 64, "depth": 3,
                                                    "num_heads": 4})
    message = str(info.value)
    assert "missing keys: pos_embed" in message and "rope_embed.periods" in message
    assert "a DINOv3 file" in message and "pass a dinov3 arch" in message


@pytest.mark.parametrize("gated_mlp", [False, True])
def test_real_transformers_dinov3_model_folder_matches_transformers(tmp_path, gated_mlp):
    transformers = pytest.importorskip("transformers")
    config = transformers.DINOv3ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=256, num_register_tokens=4, layerscale_value=0.5,
                                          use_gated_mlp=gated_mlp, hidden_act="silu" if gated_mlp else "gelu",
                                          image_size=32)
    hf_model = transformers.DINOv3ViTModel(config).eval()
    with torch.no_grad():  # move every parameter off its initial value so that all of them matter
        for param in hf_model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    hf_model.save_pretrained(tmp_path)
    model = dinofeat.load(tmp_path, device="cpu")
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        hf_model.rope_embeddings.inv_freq.copy_(1 / released_periods(16))  # the periods dinofeat uses
        expected = hf_model(pixel_values=x).last_hidden_state
        ours = model.backbone.forward_tokens(x).tokens
    assert (ours - expected).abs().max() <= TOL
