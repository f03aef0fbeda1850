"""Continuous batching against request batching, under Poisson arrivals.

A decoder-only model (random weights; sizes printed with the table) is
exported as a `TextGenerator` whose `max_length` holds a prompt of up to 16
characters plus 256 new tokens, with an end id the model can never produce
(so every request runs to its length). Each request asks for
`max_new_tokens` drawn uniformly from 8 to 256. `keras-transformer serve`
runs in a subprocess, one of three ways:

- `predict`: today's request batching, `:predict` through the batching
  queue (whole searches, up to `--slots` requests a batch). The exported
  search has no per-request length, so every request runs to 256 tokens;
- `static`: `:generate` over the same step functions as `continuous`, but a
  batch is admitted only when the previous one has finished (request-level
  batching, Orca's baseline): each request stops at its own length, and the
  batch is done when its longest request is;
- `continuous`: `:generate`, new requests join the running batch at the
  next step, short requests in a pool apart from long ones
  (`--length-groups auto`);
- `continuous-one-pool`: the same with one pool (`--length-groups none`).

Requests arrive as a Poisson process at each rate of `--rates` (open loop:
a request is sent at its arrival time whatever the server is doing) for
`--seconds`, streamed (`:generate_stream`) so that the time to the first
token is measured too. Latency counts from the arrival time. Reported per
mode and rate: completed requests/s, p50 and p99 latency, p50 time to the
first token. Then the comparison the issue asks for: `predict`'s saturated
rate (the most requests/s it completed in the sweep), its p99 latency
measured at 80 % of that rate, and the highest offered rate at which
`continuous` keeps its p99 within it (twice the 80 % rate is added to the
continuous sweep).

    python benchmarks/continuous_batching.py            # about 25 minutes
    python benchmarks/continuous_batching.py --rates 1 2 4 --seconds 20 --modes continuous
"""

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

PROMPT_CHARS = 16
NEW_TOKENS = 256


def export_model(directory, args):
    """The benchmark's model, exported greedy to `directory/bench`."""
    import keras
    import keras_hub

    from keras_transformer.data.special_tokens import SpecialIds
    from keras_transformer.export import export_saved_model
    from keras_transformer.generation import DecodingConfig, TextGenerator
    from keras_transformer.models import TransformerConfig, build_causal_lm

    keras.utils.set_random_seed(0)
    config = TransformerConfig(vocab_size=128, max_length=PROMPT_CHARS + NEW_TOKENS + 1,
                               embed_dim=args.embed_dim, num_heads=args.num_heads,
                               ffn_dim=4 * args.embed_dim, num_encoder_layers=0,
                               num_decoder_layers=args.layers, dropout=0.0, norm_first=True)
    model = build_causal_lm(config)
    # An end id past the vocabulary: no request ends before its length.
    special = SpecialIds(end=config.vocab_size)
    tokenizer = keras_hub.tokenizers.UnicodeCodepointTokenizer(
        vocabulary_size=128, replacement_char=127, lowercase=False)
    generator = TextGenerator(model, tokenizer, max_length=config.max_length,
                              decoding=DecodingConfig("greedy"), special_ids=special)
    base = os.path.join(directory, "bench")
    export_saved_model(generator, base)
    return base, model.count_params()


_STATIC = """
import sys
from keras_transformer.generation import scheduler

admit = scheduler._SlotGroup.admit
init = scheduler.ContinuousBatcher.__init__


def admit_when_all_done(self):
    if not self.batcher.active:  # request-level batching: a batch at a time
        admit(self)


def one_group(self, *args, **kwargs):
    init(self, *args, **dict(kwargs, group_lengths=None))


scheduler._SlotGroup.admit = admit_when_all_done
scheduler.ContinuousBatcher.__init__ = one_group
from keras_transformer import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def start_server(base, mode, slots):
    """`keras-transformer serve` in a subprocess; `static` patches the
    batcher to admit a new batch only when every slot is free."""
    arguments = ["serve", base, "--port", "0", "--slots", str(slots),
                 "--max-batch-size", str(slots), "--batch-timeout-micros", "20000"]
    if mode == "continuous-one-pool":
        arguments += ["--length-groups", "none"]
    if mode == "static":
        command = [sys.executable, "-c", _STATIC, *arguments]
    else:
        command = [sys.executable, "-m", "keras_transformer.cli", *arguments]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, env=env)
    line = process.stdout.readline()
    if " on http://" not in line:
        process.kill()
        raise RuntimeError(f"The server did not start: {line!r}")
    host, port = line.split(" on http://")[1].split("/v1/")[0].split(":")
    return process, host, int(port)


def one_request(host, port, mode, prompt, new_tokens, arrival, results):
    """One request at `arrival` (a `time.perf_counter` instant); appends
    `(latency, time to first token)` or None for a failure."""
    delay = arrival - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
    connection = http.client.HTTPConnection(host, port, timeout=600)
    try:
        if mode == "predict":
            body = {"instances": [prompt]}
            connection.request("POST", "/v1/models/bench:predict", json.dumps(body),
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            done = time.perf_counter()
            results.append((done - arrival, done - arrival) if response.status == 200 else None)
            return
        body = {"prompt": prompt, "max_new_tokens": new_tokens}
        connection.request("POST", "/v1/models/bench:generate_stream", json.dumps(body),
                           {"Content-Type": "application/json"})
        response = connection.getresponse()
        first = None
        while True:
            line = response.readline()
            if not line:
                break
            if first is None and line.startswith(b"event: token"):
                first = time.perf_counter()
        done = time.perf_counter()
        results.append((done - arrival, (first or done) - arrival)
                       if response.status == 200 else None)
    except OSError:
        results.append(None)
    finally:
        connection.close()


def run_rate(host, port, mode, rate, seconds, rng):
    """Poisson arrivals at `rate` for `seconds`; returns the measurements."""
    gaps = rng.exponential(1.0 / rate, size=int(rate * seconds * 2) + 1)
    offsets = np.cumsum(gaps)
    offsets = offsets[offsets < seconds]
    start = time.perf_counter() + 0.5
    results, threads = [], []
    for offset in offsets:
        prompt = "".join(chr(c) for c in rng.integers(97, 123, size=rng.integers(4, 17)))
        new_tokens = int(rng.integers(8, NEW_TOKENS + 1))
        thread = threading.Thread(target=one_request, daemon=True,
                                  args=(host, port, mode, prompt, new_tokens, start + offset,
                                        results))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    done = [r for r in results if r is not None]
    latencies = sorted(r[0] for r in done)
    firsts = sorted(r[1] for r in done)
    return {"offered": rate, "sent": len(offsets), "completed_per_s": len(done) / elapsed,
            "failed": len(results) - len(done), "p50": _percentile(latencies, 0.5),
            "p99": _percentile(latencies, 0.99), "ttft_p50": _percentile(firsts, 0.5)}


def _percentile(values, fraction):
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(fraction * len(values)))]


def warm_up(host, port, mode, slots):
    """Before the clock runs: for `predict`, one request of each batch size the
    batching queue pads to, so that XLA has compiled every shape (the server
    compiles its step functions itself when it starts)."""
    if mode != "predict":
        return
    size = 1
    while size <= slots:
        connection = http.client.HTTPConnection(host, port, timeout=600)
        connection.request("POST", "/v1/models/bench:predict",
                           json.dumps({"instances": ["warm up"] * size}),
                           {"Content-Type": "application/json"})
        connection.getresponse().read()
        connection.close()
        size *= 2


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[2, 4, 6, 8, 10, 12, 14],
                        help="arrival rates swept (requests/s)")
    parser.add_argument("--seconds", type=float, default=30, help="arrivals per rate")
    parser.add_argument("--slots", type=int, default=16,
                        help="sequences decoded together (and the batch of `predict`)")
    parser.add_argument("--modes", nargs="+", default=["predict", "static", "continuous"])
    parser.add_argument("--embed-dim", type=int, default=256)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--model", help="an exported base directory to serve instead")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        base, parameters = (args.model, None) if args.model else export_model(directory, args)
        print(f"Model: decoder-only, {args.layers} layers, d={args.embed_dim}, "
              f"{args.num_heads} heads, vocabulary 128 (code points), "
              f"{parameters or '?'} parameters; max_length {PROMPT_CHARS + NEW_TOKENS + 1}; "
              f"{args.slots} slots", flush=True)
        rows, reference = {}, None
        for mode in args.modes:
            process, host, port = start_server(base, mode, args.slots)
            rates = list(args.rates)
            if mode.startswith("continuous") and reference is not None:
                rates.append(2 * reference["offered"])  # the target rate
            try:
                warm_up(host, port, mode, args.slots)
                for rate in rates:
                    rows[mode, rate] = measure(host, port, mode, rate, args.seconds)
                if mode == "predict" and len(rates) > 1:
                    # The reference: predict at 80 % of its saturated rate, measured.
                    saturated = max(rows[mode, rate]["completed_per_s"] for rate in rates)
                    rate = round(0.8 * saturated, 2)
                    reference = rows[mode, rate] = measure(host, port, mode, rate, args.seconds)
                    reference["saturated"] = saturated
            finally:
                process.terminate()
                process.wait(60)
    print()
    print("| mode | offered req/s | completed req/s | p50 s | p99 s | first token p50 s |")
    print("|---|---|---|---|---|---|")
    for (mode, rate), row in rows.items():
        print(f"| {mode} | {rate:g} | {row['completed_per_s']:.2f} | {row['p50']:.2f} | "
              f"{row['p99']:.2f} | {row['ttft_p50']:.2f} |")
    summarize(rows, reference)


def measure(host, port, mode, rate, seconds):
    """`run_rate`, printed as it comes."""
    row = run_rate(host, port, mode, rate, seconds, np.random.default_rng(int(rate * 1000)))
    print(f"{mode:>10} offered {rate:5.2f}/s: completed {row['completed_per_s']:5.2f}/s"
          f" p50 {row['p50']:6.2f} s p99 {row['p99']:6.2f} s"
          f" first token p50 {row['ttft_p50']:6.2f} s failed {row['failed']}", flush=True)
    return row


def summarize(rows, reference):
    """The issue's comparison: `predict`'s p99 at 80 % of its saturated rate
    (the highest completed rate of its sweep), measured at that rate, and
    the highest offered rate at which `continuous` keeps its p99 within it
    (every request served)."""
    if reference is None or not any(key[0] == "continuous" for key in rows):
        return
    budget = reference["p99"]
    within = [key[1] for key in rows if key[0] == "continuous"
              and rows[key]["p99"] <= budget and rows[key]["failed"] == 0]
    best = max(within, default=0.0)
    print(f"\npredict saturates at {reference['saturated']:.2f} req/s; at 80 % of it, "
          f"{reference['offered']:g} req/s, its p99 is {budget:.2f} s. continuous keeps its "
          f"p99 within {budget:.2f} s up to {best:g} req/s offered (of those swept): "
          f"{best / reference['offered']:.2f}x the request rate (target: 2x).")


if __name__ == "__main__":
    main()
