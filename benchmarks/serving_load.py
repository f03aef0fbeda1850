"""Serving under load: `keras-transformer serve` with batching on and off, side by side.

Starts the server on 127.0.0.1 (a subprocess, a free port) once with batching
and once without, and at each concurrency level runs that many client
threads, each with its own keep-alive connection, sending single-sentence
`:predict` requests (distinct sentences of the built-in corpus) until each has
sent `--requests-per-client` (bounded in count and in `--seconds`). Reports
requests/s, sentences/s, p50/p95/p99 latency and the requests that got no
200 answer (a reset connection counts as lost). Each level is run once
untimed first, so that XLA compiles the batch shapes before the clock runs.

    python benchmarks/serving_load.py                       # saved_models/translator
    python benchmarks/serving_load.py --model saved_models/translator --clients 1 16 64 256

Without a `--model` that exists, it trains and exports the recipe's smoke
model first (about a minute).
"""

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def start_server(model, batching, max_batch_size):
    command = [sys.executable, "-m", "keras_transformer.cli", "serve", model, "--port", "0",
               "--max-batch-size", str(max_batch_size),
               "--batching" if batching else "--no-batching"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    line = process.stdout.readline()
    if " on http://" not in line:
        process.kill()
        raise RuntimeError(f"The server did not start: {line!r}")
    host, port = line.split(" on http://")[1].split("/v1/")[0].split(":")
    return process, host, int(port), os.path.basename(model.rstrip("/"))


def client(host, port, name, sentences, count, deadline, latencies, failures):
    connection = http.client.HTTPConnection(host, port, timeout=300)
    for sentence in sentences[:count]:
        if time.monotonic() > deadline:
            break
        body = json.dumps({"instances": [sentence]}).encode()
        started = time.perf_counter()
        try:
            connection.request("POST", f"/v1/models/{name}:predict", body,
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                failures.append(response.status)
                continue
        except (OSError, http.client.HTTPException) as error:
            failures.append(type(error).__name__)
            connection.close()
            connection = http.client.HTTPConnection(host, port, timeout=300)
            continue
        latencies.append(time.perf_counter() - started)
    connection.close()


def load(host, port, name, clients, per_client, sentences, seconds):
    latencies, failures = [], []
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=client, args=(
        host, port, name, sentences[i * per_client:], per_client, deadline, latencies,
        failures)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return latencies, failures, elapsed


def percentile(values, fraction):
    values = sorted(values)
    return values[min(len(values) - 1, int(fraction * len(values)))] if values else float("nan")


def smoke_model(directory):
    """Trains and exports the translation recipe's smoke model (about a minute)."""
    from keras_transformer import cli

    cli.main(["train", "translation", "--smoke", "--output-dir", os.path.join(directory, "run"),
              "--export-dir", os.path.join(directory, "translator")])
    return os.path.join(directory, "translator")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="saved_models/translator",
                        help="saved_models/<name> to serve (default: the main job's)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64, 256],
                        help="concurrency levels")
    parser.add_argument("--requests-per-client", type=int, default=4,
                        help="requests each client sends per level")
    parser.add_argument("--max-batch-size", type=int, default=64, help="the server's batches")
    parser.add_argument("--seconds", type=float, default=120, help="cap per level")
    args = parser.parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    model = args.model
    if not os.path.isdir(model):
        model = smoke_model(tempfile.mkdtemp())

    from keras_transformer.data import generate_pairs

    most = max(args.clients) * args.requests_per_client
    sentences = [english for english, _ in generate_pairs(most, seed=7)]
    rows = []
    for batching in (True, False):
        process, host, port, name = start_server(model, batching, args.max_batch_size)
        try:
            for clients in args.clients:
                load(host, port, name, clients, 1, sentences, args.seconds)  # compile shapes
                latencies, failures, elapsed = load(host, port, name, clients,
                                                    args.requests_per_client, sentences,
                                                    args.seconds)
                rows.append((batching, clients, len(latencies) + len(failures), len(failures),
                             len(latencies) / elapsed, latencies))
                print(f"  batching {'on ' if batching else 'off'} {clients:>4} clients: "
                      f"{len(latencies) / elapsed:.1f} sentences/s, {len(failures)} lost "
                      f"{sorted(set(map(str, failures)))}", flush=True)
        finally:
            process.terminate()
            process.wait(timeout=120)

    print(f"\nmodel: {model}; single-sentence requests, {args.requests_per_client} per client, "
          f"max batch {args.max_batch_size}\n")
    print("| batching | clients | requests | lost | requests/s = sentences/s | p50 ms | p95 ms "
          "| p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for batching, clients, sent, lost, rate, latencies in rows:
        print(f"| {'on' if batching else 'off'} | {clients} | {sent} | {lost} | {rate:.1f} | "
              f"{1000 * statistics.median(latencies):.0f} | "
              f"{1000 * percentile(latencies, 0.95):.0f} | "
              f"{1000 * percentile(latencies, 0.99):.0f} |")
    by_key = {(batching, clients): rate for batching, clients, _, _, rate, _ in rows}
    for clients in args.clients:
        print(f"\n{clients} clients: batching gives {by_key[True, clients] / by_key[False, clients]:.2f}×"
              " the sentences/s of the unbatched server")
    return rows


if __name__ == "__main__":
    main()
