"""Speed and size of (compressed) models: prefill latency, decode throughput, peak memory, size on disk.

Each model is measured in its own child process, so that its peak memory is its own and one model's
allocator state does not slow the next. Timings take a warm-up run, then the median (and min/max)
of several repeats. On a shared VM two processes running the same model can differ by ~10% while the
repeats within one process agree to a few percent, so `rounds` > 1 measures every model again in new
processes, interleaved (all models once per round), and reports the median over the processes.
The first model is the reference: the others are reported as speed-ups over it, next to the ideal
speed-up from the FLOPs of a prefill (linear layers, lm_head and attention scores).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue as queue_module
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from .adapters import head_dim_of, layer_sizes, linear_weights

logger = logging.getLogger(__name__)

PREFILL_SEQ_LENS = (512, 2048)
DECODE_BATCHES = (1, 16)
NEW_TOKENS = 128
PROMPT_LEN = 32


@dataclass
class Timing:
    """Median, min and max over the repeats (after a warm-up)."""

    median: float
    min: float
    max: float
    repeats: int


@dataclass
class SpeedResult:
    name: str
    layers: int
    parameters: int
    file_bytes: int | None
    device: str
    threads: int
    prefill_ms: dict[str, Timing] = field(default_factory=dict)  # by sequence length
    decode_tokens_per_s: dict[str, Timing] = field(default_factory=dict)  # by batch size
    peak_memory_mb: float = 0.0
    prefill_gflops: dict[str, float] = field(default_factory=dict)  # by sequence length

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SpeedResult":
        return cls(**{**d, "prefill_ms": {k: Timing(**v) for k, v in d["prefill_ms"].items()},
                      "decode_tokens_per_s": {k: Timing(**v) for k, v in d["decode_tokens_per_s"].items()}})


def _timing(fn, repeats: int, device: torch.device) -> Timing:
    """Wall time of `fn()` in seconds: one warm-up call, then `repeats` timed calls."""
    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            times.append(time.perf_counter() - start)
    return Timing(statistics.median(times), min(times), max(times), repeats)


@torch.no_grad()
def measure_prefill_ms(model, seq_len: int, repeats: int = 5, generator: torch.Generator | None = None) -> Timing:
    """Batch-1 prefill latency in ms over `seq_len` random tokens (warm-up, then `repeats` timed passes)."""
    dev = next(model.parameters()).device
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    ids = torch.randint(100, 1000, (1, seq_len), generator=gen).to(dev)
    return _scaled(_timing(lambda: model(ids, use_cache=False), repeats, dev), 1000)


def prefill_flops(config, seq_len: int) -> float:
    """FLOPs of one batch-1 prefill: 2 per weight per token for every linear layer (lm_head included)
    plus the causal attention scores and weighted sums (2 x 2 x head_dim x seq_len^2 / 2 per head)."""
    hidden, head_dim = config.hidden_size, head_dim_of(config)
    total = 2 * hidden * config.vocab_size * seq_len
    for i in range(config.num_hidden_layers):
        q, kv, mlp = layer_sizes(config, i)
        total += 2 * linear_weights(config, q, kv, mlp) * seq_len + 2 * q * head_dim * seq_len * seq_len
    return float(total)


def folder_bytes(path: str | Path) -> int | None:
    files = list(Path(path).glob("*.safetensors"))
    return sum(f.stat().st_size for f in files) if files else None


@torch.no_grad()
def measure_speed(model_name: str, repeats: int = 5, device: str | None = None, dtype: str = "float32",
                  quantize: str | None = None,
                  seq_lens: tuple[int, ...] = PREFILL_SEQ_LENS, batches: tuple[int, ...] = DECODE_BATCHES,
                  new_tokens: int = NEW_TOKENS) -> SpeedResult:
    """Measure one model in this process (see `benchmark` for the isolated, several-model version)."""
    from .checkpoint import load_model, resolve_model_path

    model, _ = load_model(model_name, dtype, device, quantize)
    dev = next(model.parameters()).device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    gen = torch.Generator().manual_seed(0)
    result = SpeedResult(name=model_name, layers=model.config.num_hidden_layers,
                         parameters=sum(p.numel() for p in model.parameters()),
                         file_bytes=folder_bytes(resolve_model_path(model_name)), device=str(dev),
                         threads=torch.get_num_threads())
    for seq_len in seq_lens:
        result.prefill_ms[str(seq_len)] = measure_prefill_ms(model, seq_len, repeats, gen)
        result.prefill_gflops[str(seq_len)] = prefill_flops(model.config, seq_len) / 1e9
    for batch in batches:
        ids = torch.randint(100, 1000, (batch, PROMPT_LEN), generator=gen).to(dev)
        run = lambda: model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,  # noqa: E731
                                     min_new_tokens=new_tokens, do_sample=False, use_cache=True)
        seconds = _timing(run, max(1, repeats // 2), dev)
        tokens = batch * new_tokens
        result.decode_tokens_per_s[str(batch)] = Timing(tokens / seconds.median, tokens / seconds.max,
                                                        tokens / seconds.min, seconds.repeats)
    if dev.type == "cuda":
        result.peak_memory_mb = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        result.peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return result


def _scaled(t: Timing, factor: float) -> Timing:
    return Timing(t.median * factor, t.min * factor, t.max * factor, t.repeats)


def _child(queue, args, kwargs) -> None:
    logging.basicConfig(level=logging.WARNING)
    queue.put(measure_speed(*args, **kwargs).to_dict())


def merge_rounds(results: list[SpeedResult]) -> SpeedResult:
    """One result from several processes that measured the same model: per measurement the median of the
    per-process medians (robust to one slow process), the min of the mins and the max of the maxes; the
    peak memory is the largest seen."""
    def merged(timings: list[Timing]) -> Timing:
        return Timing(statistics.median(t.median for t in timings), min(t.min for t in timings),
                      max(t.max for t in timings), sum(t.repeats for t in timings))

    first = results[0]
    return replace(
        first, prefill_ms={k: merged([r.prefill_ms[k] for r in results]) for k in first.prefill_ms},
        decode_tokens_per_s={k: merged([r.decode_tokens_per_s[k] for r in results]) for k in first.decode_tokens_per_s},
        peak_memory_mb=max(r.peak_memory_mb for r in results))


def benchmark(models: list[str], rounds: int = 1, **kwargs) -> list[SpeedResult]:
    """Measure each model in a fresh child process, one after the other (never concurrently); with
    `rounds` > 1 the whole list again in new processes, and each model's rounds merged (`merge_rounds`)."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}.")
    from .checkpoint import resolve_model_path

    for name in models:  # a typo fails here, in one line, not in a child process
        resolve_model_path(name)
    ctx = mp.get_context("spawn")
    runs: dict[str, list[SpeedResult]] = {name: [] for name in models}
    for r in range(rounds):
        for name in models:
            logger.info("Benchmarking %s (round %d of %d)", name, r + 1, rounds)
            queue = ctx.Queue()
            proc = ctx.Process(target=_child, args=(queue, (name,), kwargs))
            proc.start()
            result = None
            while result is None:  # a child that dies (an error, out of memory) never puts a result
                try:
                    result = queue.get(timeout=1.0)
                except queue_module.Empty:
                    if not proc.is_alive():
                        break
            proc.join()
            if proc.exitcode != 0 or result is None:
                raise RuntimeError(f"benchmarking {name} failed (exit code {proc.exitcode}).")
            runs[name].append(SpeedResult.from_dict(result))
    return [merge_rounds(runs[name]) for name in models]


def speed_table(results: list[SpeedResult]) -> str:
    """Markdown: each model's speed and size, and its prefill speed-up over the first model next to the
    ideal (the FLOPs ratio); "% of ideal" is measured speed-up / ideal speed-up."""
    ref = results[0]
    seq_lens = list(ref.prefill_ms)
    batches = list(ref.decode_tokens_per_s)
    head = ["model", "layers", "params (M)", "size (MB)", "peak mem (MB)"]
    for s in seq_lens:
        head += [f"prefill {s} (ms)", f"speed-up {s}", f"ideal {s}", f"% of ideal {s}"]
    head += [f"decode b{b} (tok/s)" for b in batches]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        row = [Path(r.name).name or r.name, str(r.layers), f"{r.parameters / 1e6:.1f}",
               f"{r.file_bytes / 2**20:.0f}" if r.file_bytes else "-", f"{r.peak_memory_mb:.0f}"]
        for s in seq_lens:
            t = r.prefill_ms[s]
            speedup = ref.prefill_ms[s].median / t.median
            ideal = ref.prefill_gflops[s] / r.prefill_gflops[s]
            row += [f"{t.median:.1f} ({t.min:.1f}-{t.max:.1f})", f"{speedup:.3f}x", f"{ideal:.3f}x",
                    f"{100 * speedup / ideal:.1f}%"]
        row += [f"{r.decode_tokens_per_s[b].median:.1f}" for b in batches]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
