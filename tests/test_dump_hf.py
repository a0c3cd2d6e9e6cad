#!/usr/bin/env python3
"""data/dump_hf.py on a tiny randomly initialised Llama: shapes, attributes, RoPE
consistency, agreement with the model's own attention, and kvq reading the file.
Exits 77 (skipped) where torch or transformers is not installed."""
import os
import subprocess
import sys
import tempfile

try:
    import h5py
    import numpy as np
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
except ImportError as missing:
    print(f"SKIP: {missing}")
    sys.exit(77)

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "data"))
import dump_hf  # noqa: E402

torch.manual_seed(0)
with tempfile.TemporaryDirectory() as d:
    words = [f"w{i}" for i in range(60)]
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(d)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rope_theta=500.0)
    LlamaForCausalLM(config).save_pretrained(d)
    text = os.path.join(d, "text.txt")
    with open(text, "w") as f:
        f.write(" ".join(words[i % 60] for i in range(0, 300, 7)))
    out = os.path.join(d, "kv.h5")
    dump_hf.main(["--model", d, "--text", text, "--tokens", "37", "--out", out, "--dtype", "float32"])

    with h5py.File(out) as f:
        assert f.attrs["kvq_format"] == "kvq-kv-dump" and f.attrs["format_version"] == 1
        assert f["keys"].shape == (2, 2, 37, 16) and f["queries"].shape == (2, 4, 37, 16), f["keys"].shape
        assert f.attrs["num_kv_heads"] == 2 and f.attrs["seq_len"] == 37
        k, k_pre, q, v = (f[n][...] for n in ("keys", "keys_pre_rope", "queries", "values"))
    # keys = RoPE(keys_pre_rope), rotate-half layout, theta 500.
    half = 8
    inv = 500.0 ** (-np.arange(half) * 2.0 / 16)
    ang = np.arange(37)[:, None] * inv[None, :]
    cos, sin = np.cos(np.concatenate([ang, ang], 1)), np.sin(np.concatenate([ang, ang], 1))
    rot = np.concatenate([-k_pre[..., half:], k_pre[..., :half]], -1)
    assert np.allclose(k, k_pre * cos + rot * sin, atol=1e-5), np.abs(k - (k_pre * cos + rot * sin)).max()
    # Attention from the dumped q, k, v equals the model's own attention output (before o_proj), layer 1.
    model = LlamaForCausalLM.from_pretrained(d, attn_implementation="eager").eval()
    seen = {}
    model.model.layers[1].self_attn.o_proj.register_forward_hook(lambda m, i, o: seen.setdefault("x", i[0]))
    ids = PreTrainedTokenizerFast.from_pretrained(d)(open(text).read(), return_tensors="pt").input_ids[:, :37]
    with torch.no_grad():
        model(ids)
    mask = np.triu(np.full((37, 37), -np.inf), 1)
    outs = []
    for h in range(4):
        s = q[1, h] @ k[1, h // 2].T / 4.0 + mask
        p = np.exp(s - s.max(1, keepdims=True))
        outs.append((p / p.sum(1, keepdims=True)) @ v[1, h // 2])
    ours = np.concatenate(outs, 1)
    assert np.allclose(ours, seen["x"][0].numpy(), atol=1e-4), np.abs(ours - seen["x"][0].numpy()).max()
    kvq = os.environ.get("KVQ_BINARY")
    if kvq:
        subprocess.run([kvq, "inspect", out], check=True, stdout=subprocess.DEVNULL)
print("dump_hf: 1 passed, 0 failed")
