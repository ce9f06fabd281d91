#!/usr/bin/env python3
"""Greedy fill-in-the-middle (FIM, PSM order) references of the nano model, computed by transformers.

    python3 nano/fim_reference.py --model nano/model --heldout nano/heldout.py.txt --out /tmp/fim_reference.json

The model is loaded and patched exactly as train_nano.py's reference stage does it (train_nano.reload_model:
from_pretrained in float32 from the bf16 weights, eager attention, eager experts, make_fixtures.patch_semantics; TF32
off, float32 matmul precision "highest"), and decoded with train_nano.greedy (argmax, full recompute, use_cache=False).
As a guard, the greedy continuations stored in reference.json next to the model are recomputed first and must match.

Cases (deterministic, from the held-out text only): 8 windows of 600-1200 characters aligned to line starts, one per
held-out stdlib file. Cases 0-4 have a line-aligned middle of 1-3 whole lines (simple single-line statements inside a
function body, found with ast); cases 5-7 have a hole in the middle of a line (right-hand side of an assignment, a
return value, the arguments of a call). Prompt:

    [BOS, <｜fim▁begin｜>, *encode(prefix), <｜fim▁hole｜>, *encode(suffix), <｜fim▁end｜>]

with prefix and suffix encoded separately, add_special_tokens=False. The generated middle stops at EOS (not included)
or after --max-new-tokens.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import random
import re
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "nano"))
import train_nano as tn  # noqa: E402  (imports fixtures/make_fixtures.py; no torch at import time)

mf = tn.mf
FORMAT_VERSION = 1
SEED = 20240611
# kinds of the 8 cases, in order: ("lines", k) = k whole lines; ("rhs"|"return"|"args",) = hole inside a line
CASE_KINDS = [("lines", 1), ("lines", 2), ("lines", 1), ("lines", 3), ("lines", 1), ("rhs",), ("return",), ("args",)]
WINDOW_MIN, WINDOW_MAX = 600, 1200
SIMPLE_STMTS = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Return, ast.Expr, ast.Raise, ast.Pass, ast.Break,
                ast.Continue, ast.Delete)


# ----------------------------------------------------------------------------------------------------------------
# Case selection (text only; no model involved)
# ----------------------------------------------------------------------------------------------------------------

def split_files(text):
    """[(name, start, end)] of the held-out stdlib files (the text after each '# ---- file: ... ----' line)."""
    pat = re.compile(r"^# ---- file: (.+) ----\n", re.M)
    ms = list(pat.finditer(text))
    out = []
    for i, m in enumerate(ms):
        end = ms[i + 1].start() if i + 1 < len(ms) else len(text)
        out.append((m.group(1), m.end(), end))
    return out


def is_simple_line_stmt(st, lines):
    if not isinstance(st, SIMPLE_STMTS) or st.lineno != st.end_lineno:
        return False
    if isinstance(st, ast.Expr) and not isinstance(st.value, ast.Call):  # docstrings, bare names
        return False
    line = lines[st.lineno - 1]
    body = line.rstrip("\n")
    stripped = body.strip()
    return (line.isascii() and 6 <= len(stripped) <= 60 and "#" not in body
            and st.end_col_offset == len(body) and st.col_offset == len(body) - len(body.lstrip()))


def function_bodies(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.body
            for sub in ast.walk(node):  # bodies of if/for/while/with/try inside the function
                if sub is not node and isinstance(sub, (ast.If, ast.For, ast.While, ast.With, ast.Try)):
                    for b in (getattr(sub, "body", []), getattr(sub, "orelse", []), getattr(sub, "finalbody", [])):
                        if b:
                            yield b


def candidates(seg, kind):
    """Holes (p0, p1) in seg (offsets into the file's text) of the given kind, in source order."""
    lines = seg.splitlines(keepends=True)
    starts = [0]
    for ln in lines:
        starts.append(starts[-1] + len(ln))
    tree = ast.parse(seg)
    out = set()
    for body in function_bodies(tree):
        if kind[0] == "lines":
            k = kind[1]
            for i in range(len(body) - k + 1):
                sts = body[i:i + k]
                if all(is_simple_line_stmt(s, lines) for s in sts) and \
                        all(sts[j + 1].lineno == sts[j].lineno + 1 for j in range(k - 1)):
                    out.add((starts[sts[0].lineno - 1], starts[sts[-1].lineno]))
            continue
        for st in body:
            if not is_simple_line_stmt(st, lines):
                continue
            ls = starts[st.lineno - 1]
            if kind[0] == "rhs" and isinstance(st, ast.Assign) and len(st.targets) == 1:
                v = st.value
                if v.end_col_offset - v.col_offset >= 4:
                    out.add((ls + v.col_offset, ls + v.end_col_offset))
            elif kind[0] == "return" and isinstance(st, ast.Return) and st.value is not None:
                v = st.value
                if v.end_col_offset - v.col_offset >= 4:
                    out.add((ls + v.col_offset, ls + v.end_col_offset))
            elif kind[0] == "args":
                for c in ast.walk(st):
                    if isinstance(c, ast.Call) and c.args and not c.keywords and \
                            not any(isinstance(a, ast.Starred) for a in c.args):
                        a0, a1 = c.args[0], c.args[-1]
                        if a1.end_col_offset - a0.col_offset >= 3 and \
                                seg[ls + a1.end_col_offset] == ")" and seg[ls + a0.col_offset - 1] == "(":
                            out.add((ls + a0.col_offset, ls + a1.end_col_offset))
    return sorted(out), starts


def make_window(seg, starts, p0, p1, rng):
    """Line-aligned window [a, b) of seg around the hole [p0, p1): WINDOW_MIN..WINDOW_MAX characters."""
    W = rng.randint(700, 1100)
    pre_target = rng.randint(W // 3, (2 * W) // 3)
    hole_line = max(i for i, s in enumerate(starts) if s <= p0)
    end_line = min(i for i, s in enumerate(starts) if s >= p1)  # first line start at or after the middle's end
    if starts[end_line] != p1 and end_line < len(starts) - 1 and seg[p1:starts[end_line]].count("\n") != 1:
        raise AssertionError("hole spans lines unexpectedly")
    ai = hole_line
    while ai > 0 and starts[hole_line] - starts[ai - 1] <= pre_target:
        ai -= 1
    bi = end_line
    while bi < len(starts) - 1 and starts[bi + 1] - starts[ai] <= W:
        bi += 1
    while starts[bi] - starts[ai] < WINDOW_MIN and ai > 0:  # near the end of the file: more prefix
        ai -= 1
    return starts[ai], starts[bi]


def pick_cases(held, tries):
    """For each of the 8 cases: up to `tries` candidate cases (hole + window), in a seeded random order."""
    files = split_files(held)
    usable = []
    for name, s, e in files:
        try:
            ast.parse(held[s:e])
        except SyntaxError:
            continue
        usable.append((name, s, e))
    if len(usable) < len(CASE_KINDS):
        tn.die(f"only {len(usable)} parseable held-out files")
    out = []
    for i, kind in enumerate(CASE_KINDS):
        name, s, e = usable[i]
        seg = held[s:e]
        cands, starts = candidates(seg, kind)
        # enough context on both sides for a 600+ character window
        cands = [c for c in cands if c[0] >= 250 and len(seg) - c[1] >= 150 and held[s + c[0]:s + c[1]].strip()]
        if not cands:
            tn.die(f"no candidate hole of kind {kind} in {name}")
        random.Random(f"{SEED}-{i}").shuffle(cands)
        if kind[0] == "lines":
            label = f"{kind[1]}_line{'s' if kind[1] > 1 else ''}"
        else:
            label = {"rhs": "midline_assign_rhs", "return": "midline_return_value", "args": "midline_call_args"}[kind[0]]
        per = []
        for j, (p0, p1) in enumerate(cands[:tries]):
            a, b = make_window(seg, starts, p0, p1, random.Random(f"{SEED}-{i}-{j}"))
            prefix, middle, suffix = seg[a:p0], seg[p0:p1], seg[p1:b]
            assert WINDOW_MIN <= len(prefix + middle + suffix) <= WINDOW_MAX, (name, len(prefix + middle + suffix))
            assert a in starts and b in starts, "window not line-aligned"
            if kind[0] == "lines":
                assert p0 in starts and p1 in starts and middle.endswith("\n") and middle.count("\n") == kind[1]
            else:
                assert "\n" not in middle and p0 not in starts and seg[p0 - 1] != "\n" and p1 not in starts
            per.append({"name": f"{i}_{Path(name).stem}_{label}", "file": name, "kind": label, "candidate": j,
                        "window_chars": [s + a, s + b], "hole_chars": [s + p0, s + p1],
                        "prefix": prefix, "suffix": suffix, "true_middle": middle})
        out.append(per)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------------

def load_tokenizer(model_dir):
    import tokenizers
    path = os.path.join(model_dir, "tokenizer.json")
    tok = tokenizers.Tokenizer.from_file(path)
    added = {a["content"]: a["id"] for a in json.load(open(path, encoding="utf-8"))["added_tokens"]}
    cfg = json.load(open(os.path.join(model_dir, "config.json"), encoding="utf-8"))
    ids = {}
    for name, text in (("bos", tn.BOS), ("eos", tn.EOS), ("pre", tn.FIM_BEGIN), ("suf", tn.FIM_HOLE),
                       ("mid", tn.FIM_END)):
        if text not in added or tok.token_to_id(text) != added[text]:
            tn.die(f"{text!r} is not an added token of {path}")
        ids[name] = added[text]
    if ids["bos"] != cfg["bos_token_id"] or ids["eos"] != cfg["eos_token_id"]:
        tn.die(f"config bos/eos {cfg['bos_token_id']}/{cfg['eos_token_id']} != tokenizer {ids['bos']}/{ids['eos']}")
    return tok, ids, added, cfg


def build_prompt(tok, ids, added, prefix, suffix):
    for part in (prefix, suffix):
        for sp in list(added) + list(tn.SPECIALS):
            assert sp not in part, f"special token text {sp!r} in FIM input"
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731  (as in train_nano.reference)
    pi, si = enc(prefix), enc(suffix)
    special_ids = set(added.values())
    assert not special_ids & set(pi + si), "special token id in encoded prefix/suffix"
    assert tok.decode(pi, skip_special_tokens=False) == prefix and tok.decode(si, skip_special_tokens=False) == suffix
    return [ids["bos"], ids["pre"], *pi, ids["suf"], *si, ids["mid"]], len(pi), len(si)


# ----------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="nano/model")
    ap.add_argument("--heldout", default="nano/heldout.py.txt")
    ap.add_argument("--out", required=True, help="output JSON path")
    ap.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--tries", type=int, default=8,
                    help="candidate holes per case; the first whose greedy middle stops at EOS is kept")
    ap.add_argument("--min-margin", type=float, default=0.01,
                    help="prefer candidates whose greedy steps all have a top1-top2 logit margin >= this")
    ap.add_argument("--reference", default=None,
                    help="reference.json whose greedy outputs must be reproduced first (default: next to --model; "
                         "'none' to skip)")
    ap.add_argument("--cases-only", action="store_true", help="pick and tokenize the cases, print them; no torch")
    args = ap.parse_args()
    try:
        sys.stdout.reconfigure(line_buffering=True)
    except Exception:  # noqa: BLE001
        pass

    held = open(args.heldout, encoding="utf-8", newline="").read()
    cand_lists = pick_cases(held, args.tries)
    tok, ids, added, cfg_json = load_tokenizer(args.model)
    for per in cand_lists:
        for c in per:
            c["prompt_ids"], c["n_prefix_tokens"], c["n_suffix_tokens"] = build_prompt(tok, ids, added, c["prefix"],
                                                                                         c["suffix"])
    if args.cases_only:
        for per in cand_lists:
            for c in per:
                print(f"== {c['name']} candidate {c['candidate']}: window {c['window_chars']} "
                      f"({c['window_chars'][1] - c['window_chars'][0]} chars), prompt {len(c['prompt_ids'])} tokens\n"
                      f"  prefix tail {c['prefix'][-70:]!r}\n  middle {c['true_middle']!r}\n"
                      f"  suffix head {c['suffix'][:50]!r}")
        return

    import numpy as np
    import torch
    import transformers
    import tokenizers
    import safetensors

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # precision settings of train_nano's reference stage
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    try:
        torch.set_float32_matmul_precision("highest")
    except Exception:  # noqa: BLE001
        pass
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, "
          f"device {device}" + (f" ({torch.cuda.get_device_name(0)})" if device.startswith("cuda") else ""))

    log = tn.Log(None)
    checks = tn.LogChecks(log)
    # train_nano's cfg is what export_model wrote as config.json; rebuild it from the run's defaults as a cross-check
    ns = types.SimpleNamespace(hidden=256, layers=6, intermediate=512, moe_intermediate=96, experts_impl="eager")
    cfg = tn.model_config(ns, cfg_json["vocab_size"], ids["bos"], ids["eos"])
    checks.add("config.json == train_nano.model_config (defaults)", cfg == cfg_json)
    cfg = cfg_json
    reload_args = types.SimpleNamespace(experts_impl="eager")  # train_nano --experts-impl default (reference.json)
    model, sem = tn.reload_model(reload_args, torch, np, args.model, cfg, device, checks)

    # guard: the same loading/decoding reproduces reference.json's greedy continuations
    ref_path = args.reference or os.path.join(os.path.dirname(os.path.abspath(args.model)), "reference.json")
    ref_match = None
    if args.reference != "none" and os.path.isfile(ref_path):
        ref = json.load(open(ref_path, encoding="utf-8"))
        checks.add("semantics record == reference.json's", sem == ref.get("semantics"),
                   f"patched softmax scale: {sem.get('patched_softmax_scale')} (reference.json "
                   f"{ref.get('softmax_scale_patched')})")
        ref_match = []
        for g in ref["greedy"]:
            o, _ = tn.greedy(torch, model, g["prompt_ids"], len(g["output_ids"]), ids["eos"], device)
            ref_match.append(o == g["output_ids"])
        checks.add("reference.json greedy continuations reproduced", all(ref_match),
                   f"{sum(ref_match)}/{len(ref_match)} identical")
    else:
        checks.info("reference.json check skipped", ref_path)

    n = args.max_new_tokens
    eos = ids["eos"]
    out_cases = []
    for per in cand_lists:
        # selection: the first candidate (seeded order) whose greedy middle ends with EOS within max_new_tokens with
        # no near-tie (top1-top2 logit margin >= --min-margin at every step); else the first that ends with EOS;
        # else the first candidate
        tried = []
        chosen = None
        fallback = None
        for c in per:
            o, margins = tn.greedy(torch, model, c["prompt_ids"], n, eos, device)
            stopped = bool(o and o[-1] == eos)
            mid = o[:-1] if stopped else o
            c.update({"middle_ids": mid, "middle_text": tok.decode(mid, skip_special_tokens=False),
                      "stopped_at_eos": stopped, "top1_top2_margins": margins})
            tried.append({"candidate": c["candidate"], "hole_chars": c["hole_chars"], "stopped_at_eos": stopped,
                          "n_generated": len(mid), "min_margin": min(margins)})
            if stopped and fallback is None:
                fallback = c
            if stopped and min(margins) >= args.min_margin:
                chosen = c
                break
        if chosen is None:
            chosen = fallback or per[0]
        c = chosen
        c["selection"] = {"candidate": c["candidate"], "tried": tried}
        out_cases.append({k: c[k] for k in ("name", "file", "kind", "prefix", "suffix", "true_middle", "prompt_ids",
                                            "middle_ids", "middle_text", "stopped_at_eos", "n_prefix_tokens",
                                            "n_suffix_tokens", "window_chars", "hole_chars", "top1_top2_margins",
                                            "selection")})
        print(f"== {c['name']} (candidate {c['candidate']} of {len(tried)} tried): prompt {len(c['prompt_ids'])} "
              f"tokens, generated {len(c['middle_ids'])} tokens{' + EOS' if c['stopped_at_eos'] else ' (no EOS)'}, "
              f"min margin {min(c['top1_top2_margins']):.4f}")
        print(f"   true middle: {c['true_middle']!r}")
        print(f"   generated  : {c['middle_text']!r}")

    result = {
        "format_version": FORMAT_VERSION,
        "model": "nano",
        "model_dir": args.model,
        "generator": {"script": "nano/fim_reference.py", "argv": sys.argv[1:]},
        "procedure": ("prompt_ids = [bos_id, fim_ids.pre (<｜fim▁begin｜>), *encode(prefix), fim_ids.suf (<｜fim▁hole｜>), "
                      "*encode(suffix), fim_ids.mid (<｜fim▁end｜>)], prefix and suffix encoded separately with "
                      "tokenizer.json, add_special_tokens=False; greedy argmax decoding with a full recompute per token "
                      "(train_nano.greedy, use_cache=False), float32 from the bf16 weights, eager attention, TF32 off, "
                      "DeepSeek semantics as in train_nano's reference stage; middle_ids stop before EOS or after "
                      "max_new_tokens"),
        "device": device + (f" ({torch.cuda.get_device_name(0)})" if device.startswith("cuda") else ""),
        "bos_id": ids["bos"], "eos_id": eos,
        "fim_ids": {"pre": ids["pre"], "suf": ids["suf"], "mid": ids["mid"]},
        "max_new_tokens": n,
        "selection": ("per case, candidate holes of its kind in its file are put in a seeded random order (text only); "
                      f"the first of at most {args.tries} whose greedy middle ends with EOS within max_new_tokens and "
                      f"whose top1-top2 logit margins are all >= {args.min_margin} is kept, else the first that ends "
                      "with EOS, else the first candidate; cases[].selection lists the candidates tried"),
        "semantics": sem,
        "softmax_scale_patched": bool(sem.get("patched_softmax_scale")),
        "reference_json_greedy_reproduced": ref_match,
        "cases": out_cases,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                     "numpy": np.__version__, "safetensors": safetensors.__version__},
        "checks": checks.items,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    mf.write_json(args.out, result)
    n_eos = sum(c["stopped_at_eos"] for c in out_cases)
    print(f"wrote {args.out}: {len(out_cases)} cases, {n_eos} stopped at EOS; "
          f"checks {sum(1 for c in checks.items if c['ok'])} passed, {len(checks.failed)} failed")
    if checks.failed:
        for c in checks.failed:
            print(f"  FAIL {c['check']}: {str(c['detail'])[:300]}")
        sys.exit(1)


if __name__ == "__main__":
    main()
