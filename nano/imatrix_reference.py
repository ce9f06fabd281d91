#!/usr/bin/env python3
"""Importance-matrix statistics of the nano model, computed by transformers: the reference for `dscoder imatrix`.

    python3 nano/imatrix_reference.py --model nano/model --text src/imatrix/calibration/code.txt \
        --out nano/imatrix_reference

The model is loaded and patched exactly as train_nano.py's reference stage does it (train_nano.reload_model: float32,
eager attention, eager experts, make_fixtures.patch_semantics; TF32 off). The text is tokenized with tokenizer.json
(BOS first, as llama.cpp tokenizes it), cut into --chunks chunks of --chunk-size tokens whose first token is replaced
by BOS (llama-imatrix's and llama-perplexity's procedure), and each chunk is run as one sequence.

For every weight llama.cpp multiplies, the statistic is the sum over tokens of x**2 per input column, where x is that
weight's input, and the count of rows summed:

* attention: q_proj (GGUF attn_q), kv_a_proj_with_mqa (attn_kv_a_mqa), o_proj (attn_output): forward pre-hooks;
* dense layer: gate_proj, up_proj (ffn_gate, ffn_up), down_proj (ffn_down); shared experts likewise (*_shexp);
* router (ffn_gate_inp) and routed experts: the MoE block's input x, the routing recomputed from the gate weight
  (softmax scores, top-k; one expert group), per expert: Σx² of its tokens for ffn_gate_exps/ffn_up_exps and
  Σh² with h = silu(x·Wg)·(x·Wu) for ffn_down_exps, and the number of tokens routed to it.

MLA's absorbed attn_k_b/attn_v_b have no counterpart in transformers' (unabsorbed) attention and are left out.

Outputs: OUT.bin (float32 little-endian sums, concatenated) and OUT.json (the token ids of the chunks, and per
GGUF weight name: offset and length into OUT.bin in floats, number of matrices, and counts).
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "nano"))
import train_nano as tn  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="nano/model")
    ap.add_argument("--text", default="src/imatrix/calibration/code.txt")
    ap.add_argument("--out", required=True, help="output path without extension")
    ap.add_argument("--chunks", type=int, default=2)
    ap.add_argument("--chunk-size", type=int, default=512)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()

    import numpy as np
    import tokenizers
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")

    cfg = json.load(open(Path(args.model) / "config.json", encoding="utf-8"))
    tok = tokenizers.Tokenizer.from_file(str(Path(args.model) / "tokenizer.json"))
    text = open(args.text, encoding="utf-8", newline="").read()
    bos = cfg["bos_token_id"]
    ids = [bos] + tok.encode(text, add_special_tokens=False).ids
    n = args.chunk_size
    chunks = [[bos] + ids[c * n + 1:(c + 1) * n] for c in range(min(args.chunks, len(ids) // n))]
    assert chunks and all(len(c) == n for c in chunks), "text too short"

    log = tn.Log(None)
    checks = tn.LogChecks(log)
    model, _ = tn.reload_model(types.SimpleNamespace(experts_impl="eager"), torch, np, args.model, cfg, device, checks)
    n_used = cfg["num_experts_per_tok"]
    assert cfg.get("n_group", 1) in (1, None) and cfg.get("topk_method", "greedy") in ("greedy", "group_limited_greedy")
    assert cfg.get("scoring_func", "softmax") == "softmax"

    stats = {}  # gguf name -> (sums [n_mat, cols] float64, counts [n_mat] int)

    def add(name, x, mat=0, n_mat=1):
        x = x.reshape(-1, x.shape[-1]).double()
        s, c = stats.get(name, (None, None))
        if s is None:
            s = torch.zeros(n_mat, x.shape[-1], dtype=torch.float64, device=x.device)
            c = [0] * n_mat
        s[mat] += (x * x).sum(0)
        c[mat] += x.shape[0]
        stats[name] = (s, c)

    def pre(name):
        return lambda mod, inputs: add(name, inputs[0].detach())

    hooks = []
    for i, layer in enumerate(model.model.layers):
        b = f"blk.{i}."
        att = layer.self_attn
        hooks.append(att.q_proj.register_forward_pre_hook(pre(b + "attn_q.weight")))
        hooks.append(att.kv_a_proj_with_mqa.register_forward_pre_hook(pre(b + "attn_kv_a_mqa.weight")))
        hooks.append(att.o_proj.register_forward_pre_hook(pre(b + "attn_output.weight")))
        mlp = layer.mlp
        if hasattr(mlp, "experts"):
            sh = mlp.shared_experts
            for proj, g in (("gate_proj", "ffn_gate_shexp"), ("up_proj", "ffn_up_shexp"), ("down_proj", "ffn_down_shexp")):
                hooks.append(getattr(sh, proj).register_forward_pre_hook(pre(b + g + ".weight")))
            ex = mlp.experts
            n_exp = cfg["n_routed_experts"]
            if hasattr(ex, "gate_up_proj"):
                gu = ex.gate_up_proj.detach()  # [E, 2F, H], gate rows first
                down = ex.down_proj.detach()  # [E, H, F]
                assert gu.shape[0] == n_exp and gu.shape[1] == 2 * down.shape[2], (gu.shape, down.shape)
                wg = gu[:, : down.shape[2], :]
                wu = gu[:, down.shape[2]:, :]
            else:
                wg = torch.stack([ex[e].gate_proj.weight.detach() for e in range(n_exp)])
                wu = torch.stack([ex[e].up_proj.weight.detach() for e in range(n_exp)])
            router = mlp.gate.weight.detach()

            def moe_pre(mod, inputs, b=b, wg=wg, wu=wu, router=router, n_exp=n_exp):
                x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()
                add(b + "ffn_gate_inp.weight", x)
                scores = torch.softmax(x @ router.float().t(), dim=-1)
                top = torch.topk(scores, n_used, dim=-1).indices  # [T, k]
                for e in range(n_exp):
                    rows = (top == e).any(-1)
                    xe = x[rows]
                    for g in ("ffn_gate_exps", "ffn_up_exps"):
                        add(b + g + ".weight", xe, e, n_exp)
                    h = torch.nn.functional.silu(xe @ wg[e].float().t()) * (xe @ wu[e].float().t())
                    add(b + "ffn_down_exps.weight", h, e, n_exp)

            hooks.append(mlp.register_forward_pre_hook(moe_pre))
        else:
            for proj, g in (("gate_proj", "ffn_gate"), ("up_proj", "ffn_up"), ("down_proj", "ffn_down")):
                hooks.append(getattr(mlp, proj).register_forward_pre_hook(pre(b + g + ".weight")))

    with torch.no_grad():
        for c in chunks:
            model(input_ids=torch.tensor([c], device=device), use_cache=False)
    for h in hooks:
        h.remove()

    blob = []
    index = {}
    off = 0
    for name in sorted(stats):
        s, c = stats[name]
        flat = s.float().cpu().numpy().reshape(-1)
        index[name] = {"offset": off, "len": int(flat.size), "n_mat": int(s.shape[0]), "counts": [int(v) for v in c]}
        blob.append(flat)
        off += flat.size
    np.concatenate(blob).astype("<f4").tofile(args.out + ".bin")
    meta = {
        "format": 1,
        "command": " ".join(["python3", "nano/imatrix_reference.py"] + sys.argv[1:]),
        "text": args.text,
        "chunk_size": n,
        "chunks": chunks,
        "entries": index,
    }
    json.dump(meta, open(args.out + ".json", "w", encoding="utf-8"))
    print(f"{len(index)} entries, {off} floats, {len(chunks)} chunks of {n} tokens -> {args.out}.bin/.json")
    failed = [c for c in checks.items if c["ok"] is False]
    if failed:
        sys.exit(f"failed checks: {failed}")


if __name__ == "__main__":
    main()
