"""Damaged model files for the hostile-input tests: a tiny GGUF written from a tiny safetensors model, and the ways
a download or an edit breaks a model folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

# Hugging Face name -> GGUF name of the tiny Llama's tensors (per layer: "model.layers.{i}." + key)
GGUF_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight"}
GGUF_LAYER_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
                    "post_attention_layernorm": "ffn_norm"}


def write_tiny_gguf(model_dir: Path, out: Path) -> Path:
    """A float32 Llama GGUF (config, BPE tokenizer and weights) from a folder saved by conftest.build_tiny_model;
    transformers loads it like a real GGUF."""
    import gguf
    from safetensors.numpy import load_file

    cfg = json.loads((model_dir / "config.json").read_text())
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    weights = load_file(model_dir / "model.safetensors")
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("tiny")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_dimension_count(cfg["hidden_size"] // cfg["num_attention_heads"])
    w.add_vocab_size(cfg["vocab_size"])
    tokens = [t for t, _ in sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t.startswith("<") and t.endswith(">") else 1 for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    names = dict(GGUF_NAMES)
    for i in range(cfg["num_hidden_layers"]):
        names.update({f"model.layers.{i}.{hf}.weight": f"blk.{i}.{g}.weight" for hf, g in GGUF_LAYER_NAMES.items()})
    for hf, name in names.items():
        w.add_tensor(name, weights[hf].astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def truncate(path: Path, keep: float | int) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    return path


def edit_config(folder: Path, **changes) -> Path:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    path.write_text(json.dumps(cfg))
    return folder


def edit_weights(folder: Path, edit) -> Path:
    """Rewrite model.safetensors after `edit(dict of tensors)`."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})
    return folder


def to_bin(folder: Path) -> Path:
    """The folder's weights as pytorch_model.bin instead of model.safetensors."""
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder / "pytorch_model.bin"


def gguf_dims_small(path: Path, limit: int) -> bool:
    """Whether a (possibly damaged) GGUF still describes a small model: a bit flip in a dimension is a valid model of
    another size, which loads (slowly) rather than failing; fuzzing skips those. Unreadable files count as small."""
    try:
        import gguf

        reader = gguf.GGUFReader(str(path))
        dims = ("embedding_length", "feed_forward_length", "block_count", "vocab_size", "head_count",
                "head_count_kv", "context_length")
        for key, field in reader.fields.items():
            if key.endswith(dims) and int(field.parts[field.data[0]][0]) > limit:
                return False
    except Exception:  # the loader must explain these; here they only mean "not a big model"
        return True
    return True


def scale_weights(folder: Path, factor: float, names: tuple[str, ...] = ("lm_head.weight",)) -> Path:
    """Multiply the named tensors (suffixes) by factor: a larger lm_head gives large logits (bf16 rounds them
    coarsely); larger projections overflow float16's activations."""
    def scale(tensors):
        for name, t in tensors.items():
            if name.endswith(names):
                t.mul_(factor)

    return edit_weights(folder, scale)


def zero_weights(folder: Path) -> Path:
    """Every weight zero: finite, loadable, and logits that do not depend on the input."""
    return edit_weights(folder, lambda tensors: [t.zero_() for t in tensors.values()])
