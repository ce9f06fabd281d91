#!/usr/bin/env python3
"""An editor session against a FIM server: successive /infill requests over one Python file with the
cursor moving as if someone were typing, as llama.vim / llama.vscode send them.

Each step (one keystroke's worth of typing) sends two requests with the same prompt: one for a single
token, whose latency is the time to first token (robust to models whose first tokens are not yet
printable text, such as random-weight benchmark models), then one for `--n-predict` tokens, whose
server-side `timings` give the generation speed and whose text is compared across servers. Step 1
starts from an empty cache (cold); each later one differs from the previous only near the cursor, so
a server with a prompt cache evaluates what follows the edit. Works with `dscoder serve` and
llama-server (same requests, same format).

usage: scripts/editor-bench.py URL --file FILE.py [--requests 30] [--n-predict 16] [--json OUT]
Standard library only.
"""
import argparse
import http.client
import json
import statistics
import sys
import time
import urllib.parse

# What the user types at the cursor, one more piece per request.
TYPED = "    result = compute_total(items, tax_rate=0.2)\n    return round(result, 2)\n"


def infill(url, prefix, suffix, n_predict):
    """One /infill; returns (seconds, response JSON)."""
    u = urllib.parse.urlparse(url)
    body = json.dumps({
        "input_prefix": prefix, "input_suffix": suffix, "input_extra": [],
        "n_predict": n_predict, "temperature": 0, "top_k": 1, "stream": False,
        "cache_prompt": True, "samplers": ["top_k"],
    })
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/infill", body, {"Content-Type": "application/json"})
    res = conn.getresponse()
    data = res.read()
    seconds = time.perf_counter() - t0
    conn.close()
    if res.status != 200:
        raise SystemExit(f"{url}: HTTP {res.status}: {data[:300]!r}")
    return seconds, json.loads(data)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--file", required=True)
    ap.add_argument("--cursor-line", type=int, default=None, help="line the typing starts after (default: the middle)")
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--n-predict", type=int, default=16)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    text = open(args.file).read()
    lines = text.splitlines(keepends=True)
    at = args.cursor_line if args.cursor_line is not None else len(lines) // 2
    head, tail = "".join(lines[:at]), "".join(lines[at:])
    rows = []
    for i in range(args.requests):
        # Request i has typed (i * 3) characters: the cursor moves right, then down.
        typed = TYPED[: min(len(TYPED), i * 3)]
        ttft, first = infill(args.url, head + typed, tail, 1)
        total, gen = infill(args.url, head + typed, tail, args.n_predict)
        t, g = first.get("timings", {}), gen.get("timings", {})
        rows.append({
            "i": i, "typed_chars": len(typed), "ttft_ms": ttft * 1000, "total_ms": total * 1000,
            "prompt_n": t.get("prompt_n"), "cache_n": t.get("cache_n"),
            "predicted_n": g.get("predicted_n"), "predicted_per_second": g.get("predicted_per_second"),
            "content": gen.get("content"),
        })
        print(f"{i:2d} ttft {ttft*1000:8.1f} ms  evaluated {t.get('prompt_n')}  cached {t.get('cache_n')}"
              f"  then {g.get('predicted_n')} tokens in {total*1000:8.1f} ms"
              f"  {g.get('predicted_per_second') or 0:.1f} t/s", file=sys.stderr)
    cold = rows[0]["ttft_ms"]
    warm = [r["ttft_ms"] for r in rows[1:]]
    tps = [r["predicted_per_second"] for r in rows if r["predicted_per_second"]]
    summary = {
        "url": args.url, "file": args.file, "requests": args.requests, "n_predict": args.n_predict,
        "prompt_tokens_first": (rows[0]["prompt_n"] or 0) + (rows[0]["cache_n"] or 0),
        "ttft_cold_ms": cold, "ttft_cached_median_ms": statistics.median(warm) if warm else None,
        "ttft_cached_max_ms": max(warm) if warm else None,
        "cached_over_cold": (statistics.median(warm) / cold) if warm else None,
        "generation_tokens_per_second_median": statistics.median(tps) if tps else None,
        "rows": rows,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))
    if args.json:
        json.dump(summary, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
