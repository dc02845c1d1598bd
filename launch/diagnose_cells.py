"""Paired diagnostics of two cells of a study (same seed: same experts, start epochs, keys).

  python launch/diagnose_cells.py A0_seed0 A1_seed0 [RUNS]

RUNS: the study's runs/ folder (default launch/results/clr_study/runs).
"""

import json
import statistics as st
import sys
from pathlib import Path

RUNS = Path(__file__).resolve().parent / "results" / "clr_study" / "runs"


def distill_records(runs: Path, cell: str):
  return [json.loads(l) for l in (runs / cell / "metrics.jsonl").read_text().splitlines()
          if '"phase": "distill"' in l]


def main(base, other, runs=RUNS):
  a, b = distill_records(Path(runs), base), distill_records(Path(runs), other)
  same = sum(x["expert"] == y["expert"] and x["start_epoch"] == y["start_epoch"]
             for x, y in zip(a, b))
  print(f"{same} of {len(a)} logged iterations drew the same expert and start epoch")
  above = sum(y["l_tm"] > x["l_tm"] for x, y in zip(a, b))
  print(f"{other} L_tm above {base}'s at {above} of {len(a)}")
  for name, recs in ((base, a), (other, b)):
    half = len(recs) // 2
    print(f"{name}: mean L_tm first/second half {st.mean(r['l_tm'] for r in recs[:half]):.4f}"
          f" / {st.mean(r['l_tm'] for r in recs[half:]):.4f}; whitened RMS at the end "
          f"{recs[-1]['image_rms']:.3f}; mean |g_tm| {st.mean(r['grad_norm_tm'] for r in recs):.5f}")
  if "grad_cosine" in b[0]:
    cos = [r["grad_cosine"] for r in b]
    ratio = [r["grad_norm_contrast"] / r["grad_norm_tm"] for r in b]
    print(f"{other}: cosine(g_tm, alpha g_con) mean {st.mean(cos):+.3f} (negative at "
          f"{sum(c < 0 for c in cos)} of {len(cos)}); |alpha g_con| / |g_tm| mean "
          f"{st.mean(ratio):.2f}, median {st.median(ratio):.2f}")


if __name__ == "__main__":
  main(*sys.argv[1:4])
