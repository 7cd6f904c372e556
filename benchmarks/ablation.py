"""Quick ablations: compress SmolLM2 with several option sets on the same calibration data, print perplexity.

Usage: python benchmarks/ablation.py NUM_SAMPLES '{"ratio": 0.2, "ridge_factor": 0.1}' '{"ratio": 0.2, "method": "shortgpt"}' ...
Each JSON object holds `compress` keyword arguments (plus an optional "method", default flattengpt).
Perplexity: first 32 evaluation windows of 512 tokens. Results of the README's ablations are in
benchmarks/results/ablations_ratio0.2.txt.
"""

import json
import sys
import time

import flatten_hf
from flatten_hf.data import calibration_ids, evaluation_ids


def main() -> None:
    model, tokenizer = flatten_hf.load_model()
    evaluation = evaluation_ids(tokenizer)
    ids = calibration_ids(tokenizer, num_samples=int(sys.argv[1]), seq_len=512)
    for spec in sys.argv[2:]:
        kwargs = json.loads(spec)
        method = kwargs.pop("method", "flattengpt")
        start = time.perf_counter()
        compressed = flatten_hf.compress(model, method, calibration_ids=ids, **kwargs)
        seconds = time.perf_counter() - start
        ppl = flatten_hf.perplexity(compressed, evaluation, 512, max_windows=32)
        print(f"{method} {kwargs} time {seconds:.1f} PPL {ppl:.2f}", flush=True)


if __name__ == "__main__":
    main()
