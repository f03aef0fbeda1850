"""Serving under load: `keras-transformer serve` with batching on and off, side by side.

Starts the server on 127.0.0.1 (a subprocess, a free port) once with batching
and once without, and at each concurrency level keeps that many keep-alive
connections busy with single-sentence `:predict` requests (distinct sentences
of the built-in corpus): with `wrk` when it is installed (C: the clients take
little of the CPU the server needs), for `--wrk-seconds` a level; otherwise
from Python threads, `--requests-per-client` each (bounded in `--seconds`).
Reports requests/s, sentences/s, p50/p95/p99 latency and the requests that
got no 200 answer (a reset connection counts as lost). Before the clock runs, one
request of each batch size the server pads to (1, 2, 4, ... 64) makes XLA
compile every shape.

    python benchmarks/serving_load.py                       # saved_models/translator
    python benchmarks/serving_load.py --model saved_models/translator --clients 1 16 64 256
    keras-transformer export runs/translation --name greedy --decoding greedy
    python benchmarks/serving_load.py --model saved_models/greedy

Without a `--model` that exists, it trains and exports the recipe's smoke
model first (about a minute).
"""

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time


def start_server(model, batching, max_batch_size, extra_args=(), code=None):
    """`keras-transformer serve` in a subprocess; `code`: a checkout whose
    `keras_transformer` serves instead of this one (a before/after run)."""
    command = [sys.executable, "-m", "keras_transformer.cli", "serve", model, "--port", "0",
               "--max-batch-size", str(max_batch_size),
               "--batching" if batching else "--no-batching", *extra_args]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if code:
        env["PYTHONPATH"] = os.path.abspath(code)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, env=env, cwd=os.path.abspath(code) if code else None)
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


def warm_up(host, port, name, sentences, max_batch_size):
    """Requests of each batch size the server pads to, each led by a sentence
    of every word count the load sends, so that XLA
    compiles every shape (batch × source width) before the clock runs, as TF
    Serving's warm-up files do. A shape met first under load stalls every
    request of its batch for the compile (3–4 s on 2 cores)."""
    from keras_transformer.export.batching import default_batch_sizes

    leaders = {len(sentence.split()): sentence for sentence in sentences}.values()
    connection = http.client.HTTPConnection(host, port, timeout=600)
    for size in default_batch_sizes(max_batch_size):
        for leader in sorted(leaders, key=len):
            body = json.dumps({"instances": [leader] * size}).encode()
            connection.request("POST", f"/v1/models/{name}:predict", body,
                               {"Content-Type": "application/json"})
            connection.getresponse().read()
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


WRK_SCRIPT = """
local bodies, count = {}, 0
for line in io.lines(os.getenv("SENTENCES")) do
  bodies[#bodies + 1] = line
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  count = count + 1
  return wrk.format(nil, nil, nil, bodies[(count % #bodies) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "seconds": %f, "non_2xx": %d, "connect": %d, "read": %d, '
    .. '"write": %d, "timeout": %d, "p50": %f, "p95": %f, "p99": %f}\\n',
    summary.requests, summary.duration / 1e6, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50) / 1e3, latency:percentile(95) / 1e3, latency:percentile(99) / 1e3))
end
"""


def load_with_wrk(host, port, name, clients, sentences, seconds, directory):
    """The same load from `wrk` (C, so the clients take little of the CPU):
    `(sentences/s, lost, p50, p95, p99 in ms, requests)`."""
    script = os.path.join(directory, "predict.lua")
    bodies = os.path.join(directory, "bodies.txt")
    with open(script, "w") as handle:
        handle.write(WRK_SCRIPT)
    with open(bodies, "w") as handle:
        handle.writelines(json.dumps({"instances": [s]}) + "\n" for s in sentences)
    result = subprocess.run(
        ["wrk", f"-t{min(2, clients)}", f"-c{clients}", f"-d{seconds:g}s", "--timeout", "60s",
         "-s", script, f"http://{host}:{port}/v1/models/{name}:predict"],
        capture_output=True, text=True, env={**os.environ, "SENTENCES": bodies}, timeout=600)
    line = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if not line:
        raise RuntimeError(f"wrk failed: {result.stdout[-500:]} {result.stderr[-500:]}")
    numbers = json.loads(line[0][len("RESULT "):])
    lost = sum(numbers[key] for key in ("non_2xx", "connect", "read", "write", "timeout"))
    rate = (numbers["requests"] - lost) / numbers["seconds"]
    return rate, lost, numbers["p50"], numbers["p95"], numbers["p99"], numbers["requests"]


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
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto",
                        help="load generator: wrk (apt-get install wrk; takes little CPU), "
                             "Python threads, or wrk when installed")
    parser.add_argument("--wrk-seconds", type=float, default=10,
                        help="duration of each wrk level")
    parser.add_argument("--server-args", default="",
                        help="more options of `keras-transformer serve`, e.g. "
                             "'--num-batch-threads 2 --intra-op-threads 1'")
    parser.add_argument("--baseline-model", help="a before/after run: serve this model too "
                        "(batching on), instead of the unbatched server")
    parser.add_argument("--baseline-code", help="a checkout whose keras_transformer serves "
                        "--baseline-model (default: this one)")
    args = parser.parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    model = args.model
    if not os.path.isdir(model):
        model = smoke_model(tempfile.mkdtemp())

    from keras_transformer.data import generate_pairs

    most = max(args.clients) * args.requests_per_client
    sentences = [english for english, _ in generate_pairs(most, seed=7)]
    use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk"))
    directory = tempfile.mkdtemp()
    rows = []
    extra = args.server_args.split()
    if args.baseline_model:  # (label, model, batching, options, code)
        servers = [("before", args.baseline_model, True, [], args.baseline_code),
                   ("after", model, True, extra, None)]
    else:
        servers = [("on", model, True, extra, None), ("off", model, False, extra, None)]
    for label, served, batching, options, code in servers:
        process, host, port, name = start_server(served, batching, args.max_batch_size,
                                                 options, code)
        try:
            warm_up(host, port, name, sentences, args.max_batch_size)
            for clients in args.clients:
                # One untimed pass at this level first: the model compiles each
                # padded batch size × source width it meets once (the translator
                # pads sources to a multiple of 8 tokens), as a warmed-up server has.
                load(host, port, name, clients, args.requests_per_client, sentences,
                     args.seconds)
                if use_wrk:
                    rate, lost, p50, p95, p99, sent = load_with_wrk(
                        host, port, name, clients, sentences, args.wrk_seconds, directory)
                else:
                    latencies, failures, elapsed = load(host, port, name, clients,
                                                        args.requests_per_client, sentences,
                                                        args.seconds)
                    rate, lost, sent = len(latencies) / elapsed, len(failures), len(latencies)
                    sent += lost
                    p50, p95, p99 = (1000 * percentile(latencies, q) for q in (0.5, 0.95, 0.99))
                rows.append((label, clients, sent, lost, rate, p50, p95, p99))
                print(f"  {label:>6} {clients:>4} clients: "
                      f"{rate:.1f} sentences/s, {lost} lost", flush=True)
        finally:
            process.terminate()
            process.wait(timeout=120)

    client = "wrk" if use_wrk else f"Python threads, {args.requests_per_client} per client"
    print(f"\nmodel: {model}; single-sentence requests from {client}; "
          f"max batch {args.max_batch_size}; server options: {args.server_args or 'defaults'}")
    if args.baseline_model:
        print(f"before: {args.baseline_model} served by {args.baseline_code or 'this checkout'} "
              "with its defaults")
    first = "server" if args.baseline_model else "batching"
    print(f"\n| {first} | clients | requests | lost | requests/s = sentences/s | p50 ms "
          "| p95 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for label, clients, sent, lost, rate, p50, p95, p99 in rows:
        print(f"| {label} | {clients} | {sent} | {lost} | {rate:.1f} | "
              f"{p50:.0f} | {p95:.0f} | {p99:.0f} |")
    by_key = {(row[0], row[1]): row[4] for row in rows}
    new, old = ("after", "before") if args.baseline_model else ("on", "off")
    for clients in args.clients:
        print(f"\n{clients} clients: {new} gives {by_key[new, clients] / by_key[old, clients]:.2f}×"
              f" the sentences/s of {old}")
    return rows


if __name__ == "__main__":
    main()
