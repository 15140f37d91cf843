"""Bytes and time of one round's secure sum of partial updates (the prototype
:mod:`f3ocus_flower.secure_sum`) against sending the same updates in the clear.

A round: ``--clients`` clients, ``--layers`` layers of ``--params`` parameters each (one unit per
layer), each client training ``--budget`` layers drawn at random (seeded). In the clear a client
uploads its layers as float32. Secured, it uploads two public keys, one encrypted share pair per
peer, and a masked int64 vector over the union of the round's assigned layers; the server then
unmasks. One client drops after sharing (``--drop``), as the protocol must survive. Figures: bytes
up per client (mean), the client's masking time (mean) and the server's unmasking time, CPU seconds
on one core.

Run: ``OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_secure_sum.py`` (seconds).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from f3ocus_flower.secure_sum import SecureSumClient, SecureSumParams, union_layout, unmask_sum  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--params", type=int, default=36864, help="parameters per layer")
    parser.add_argument("--budget", type=int, default=2)
    parser.add_argument("--drop", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    layers = tuple((f"layer.{i}",) for i in range(args.layers))
    shapes = {f"layer.{i}": (args.params,) for i in range(args.layers)}
    assignment = {
        node: sorted(rng.choice(args.layers, args.budget, replace=False).tolist())
        for node in range(1, args.clients + 1)
    }
    changes = {
        node: {f"layer.{i}": rng.uniform(-0.1, 0.1, args.params).astype(np.float32) for i in chosen}
        for node, chosen in assignment.items()
    }
    params = SecureSumParams(clipping_range=1.0, threshold=max(2, args.clients // 2))
    clients = {node: SecureSumClient(node) for node in assignment}
    publics = {node: client.public for node, client in clients.items()}
    shared_bytes = {node: 0 for node in clients}
    for node, client in clients.items():
        for peer, ciphertext in client.share(publics, params.threshold).items():
            shared_bytes[node] += len(ciphertext)
            clients[peer].receive(node, ciphertext, publics)
    layout = union_layout(layers, assignment, shapes)
    survivors = sorted(clients)[args.drop :]
    masked, mask_seconds = {}, []
    for node in survivors:
        started = time.process_time()
        masked[node] = clients[node].masked(changes[node], layout, publics, params)
        mask_seconds.append(time.process_time() - started)
    revealed = [clients[node].reveal(survivors) for node in survivors]
    started = time.process_time()
    sums = unmask_sum(masked, revealed, publics, layout, params)
    unmask_seconds = time.process_time() - started
    clear = np.mean([sum(v.nbytes for v in changes[node].values()) for node in survivors])
    secured = np.mean(
        [
            sum(len(k) for k in publics[node]) + shared_bytes[node] + sum(v.nbytes for v in masked[node])
            for node in survivors
        ]
    )
    reveal_bytes = np.mean([sum(len(s) for s in r.values()) for r in revealed])
    error = max(
        float(np.max(np.abs(sums[key] - sum(changes[n][key] for n in survivors if key in changes[n])))) for key in sums
    )
    print(
        f"{args.clients} clients, {args.layers} layers x {args.params} params, budget {args.budget}, "
        f"{args.drop} dropped; union of assigned layers: {len(layout)} of {args.layers}"
    )
    print("| | bytes up per client | client CPU s | server CPU s |")
    print("|---|---|---|---|")
    print(f"| in the clear (float32, own layers) | {clear / 1e6:.3f} MB | - | - |")
    print(
        f"| secure sum (int64 over the union, keys, shares, reveal) | {(secured + reveal_bytes) / 1e6:.3f} MB "
        f"({(secured + reveal_bytes) / clear:.1f}x) | {np.mean(mask_seconds):.3f} | {unmask_seconds:.3f} |"
    )
    print(f"largest error of a recovered layer sum: {error:.2e} (quantisation step {2 / params.target_range:.2e})")


if __name__ == "__main__":
    main()
