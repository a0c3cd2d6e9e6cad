#!/usr/bin/env python3
"""Dump a Hugging Face causal LM's KV cache in kvq's dump format (data/FORMAT.md).

For researchers with their own weights (and ideally a GPU): runs the model over the
first N tokens of a text and writes keys (post-RoPE, as the cache holds them),
values, keys_pre_rope and queries (post-RoPE) for every layer, as float32.

    python data/dump_hf.py --model PATH_OR_NAME --text FILE --tokens 1024 --out kv.h5

Keys and values come from the model's own cache; queries and pre-RoPE keys from
hooks on each attention module's q_proj/k_proj, rotated with the model's rotary
embedding (rotate-half convention, as transformers applies it). Needs torch,
transformers, numpy and h5py. Loads only what --model points at: pass a local path
where no hub is reachable.
"""
import argparse
import hashlib
import os
import sys
import tempfile


def rotate_half(x):
    half = x.shape[-1] // 2
    return __import__("torch").cat((-x[..., half:], x[..., :half]), dim=-1)


def cache_layer(cache, index):
    """(keys, values) of one layer, [1, kv_heads, T, head_dim], across transformers' cache APIs."""
    if hasattr(cache, "layers"):  # transformers >= 4.56
        return cache.layers[index].keys, cache.layers[index].values
    if hasattr(cache, "key_cache"):
        return cache.key_cache[index], cache.value_cache[index]
    return cache[index]  # legacy tuple of tuples


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model path or name (from_pretrained)")
    parser.add_argument("--text", required=True, help="UTF-8 text file")
    parser.add_argument("--tokens", type=int, default=1024, help="tokens of the text to run (default 1024)")
    parser.add_argument("--out", required=True, help="output HDF5 file")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                        help="dtype the model runs in (default bfloat16); the dump is float32")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
    args = parser.parse_args(argv)

    import h5py
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    with open(args.text, "rb") as f:
        raw = f.read()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    ids = tokenizer(raw.decode("utf-8"), return_tensors="pt", add_special_tokens=False).input_ids[:, : args.tokens]
    if ids.shape[1] < args.tokens:
        sys.exit(f"dump_hf: error: {args.text}: the text has {ids.shape[1]} tokens, fewer than --tokens {args.tokens}")
    try:  # transformers >= 4.56 names it dtype; older versions torch_dtype
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype),
                                                     attn_implementation="eager")
    except TypeError:
        model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=getattr(torch, args.dtype),
                                                     attn_implementation="eager")
    model = model.to(device).eval()
    cfg = model.config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    layers = model.model.layers

    captured = {}
    hooks = []
    for index, layer in enumerate(layers):
        attn = layer.self_attn
        for name in ("q_proj", "k_proj"):
            def hook(module, inputs, output, index=index, name=name):
                captured[(index, name)] = output.detach()
            hooks.append(getattr(attn, name).register_forward_hook(hook))

    def rotary_hook(module, inputs, output):
        captured["rotary"] = output
    hooks.append(model.model.rotary_emb.register_forward_hook(rotary_hook))

    with torch.no_grad():
        out = model(ids.to(device), use_cache=True)
    for h in hooks:
        h.remove()
    cos, sin = (t.float() for t in captured["rotary"])  # [1, T, head_dim]
    cache = out.past_key_values
    T = ids.shape[1]

    def split(x, n):  # [1, T, n*d] -> [n, T, d]
        return x.float().view(1, T, n, head_dim).transpose(1, 2)[0]

    def rope(x):  # [n, T, d]
        return x * cos[0] + rotate_half(x) * sin[0]

    shape_kv = (len(layers), kv_heads, T, head_dim)
    shape_q = (len(layers), heads, T, head_dim)
    folder = os.path.dirname(os.path.abspath(args.out))
    fd, tmp = tempfile.mkstemp(prefix=".dump_hf.", suffix=".h5", dir=folder)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            sets = {name: f.create_dataset(name, shape=shape, dtype="float32", chunks=(1, 1, T, head_dim),
                                           compression="gzip", shuffle=True)
                    for name, shape in (("keys", shape_kv), ("values", shape_kv), ("keys_pre_rope", shape_kv),
                                        ("queries", shape_q))}
            for index in range(len(layers)):
                keys, values = cache_layer(cache, index)
                sets["keys"][index] = keys[0].float().cpu().numpy()
                sets["values"][index] = values[0].float().cpu().numpy()
                k_pre = split(captured[(index, "k_proj")], kv_heads)
                sets["keys_pre_rope"][index] = k_pre.cpu().numpy()
                sets["queries"][index] = rope(split(captured[(index, "q_proj")], heads)).cpu().numpy()
            f["positions"] = np.arange(T, dtype=np.int64)
            f.attrs.update(kvq_format="kvq-kv-dump", format_version=1, model=str(args.model),
                           source=f"hf:{args.model}", num_layers=len(layers), num_heads=heads,
                           num_kv_heads=kv_heads, head_dim=head_dim, seq_len=T,
                           rope_theta=float(getattr(cfg, "rope_theta", 10000.0)),
                           text_sha256=hashlib.sha256(raw).hexdigest(), model_dtype=args.dtype,
                           command=" ".join(sys.argv))
        os.replace(tmp, args.out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"wrote {args.out}: {len(layers)} layers, {heads} heads, {kv_heads} kv heads, head_dim {head_dim}, {T} tokens")


if __name__ == "__main__":
    main()
