"""Consent check per reading: the gateway's in-memory index vs. a plain dict look-up.

Builds a ConsentIndex for N connections (30 % with an interval consent, some revoked), then
times the hot-path question "which granularities may be stored for this meter's reading at t,
processed now" over a shuffled list of look-ups, beside a plain ``dict.get`` of the same keys in
the same loop shape, in the same run. Target (SPEC / issue 3): about 1 µs per check.

    python bench/consent_check.py [--connections 10000] [--checks 1000000]
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from consent.levels import Commodity
from gateway.ingest.consent_index import ConsentIndex

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def build(n: int, rng: random.Random) -> ConsentIndex:
    connections: list[dict[str, Any]] = []
    consents: list[dict[str, Any]] = []
    for i in range(n):
        ean = f"8716{i:014d}"
        connections.append(
            {
                "ean": ean,
                "ean_num": int(ean),
                "commodity": "electricity",
                "meter_id": f"E{i:016d}",
                "contract_start": T0 - timedelta(days=400),
                "contract_end": None,
                "level": rng.choice(("daily", "daily", "daily", "monthly", "none")),
            }
        )
        if rng.random() < 0.3:
            ended = T0 + timedelta(days=5) if rng.random() < 0.2 else None
            consents.append(
                {
                    "ean": ean,
                    "consent_id": uuid.uuid4(),
                    "customer_id": f"c{i}",
                    "purpose": "dynamic-tariff-billing",
                    "notice_version": "v1",
                    "granted_at": T0 - timedelta(days=rng.randint(1, 300)),
                    "expires_at": T0 + timedelta(days=700),
                    "ended_at": ended,
                    "end_reason": None if ended is None else "revoked",
                    "channel": "api",
                    "data_class": "interval",
                }
            )
    # one contract per connection, its meter installed for the contract's whole window
    installations = [
        {
            "ean": k["ean"],
            "ean_num": k["ean_num"],
            "commodity": k["commodity"],
            "meter_id": k["meter_id"],
            "installed_from": k["contract_start"],
            "installed_until": None,
        }
        for k in connections
    ]
    contract_of = {k["ean"]: uuid.uuid4() for k in connections}
    contracts = [{**k, "contract_id": contract_of[k["ean"]]} for k in connections]
    for c in consents:
        c["contract_id"] = contract_of[c["ean"]]
    index = ConsentIndex()
    index.replace_all(installations, contracts, consents)
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--checks", type=int, default=1_000_000)
    args = parser.parse_args()
    rng = random.Random(1)
    index = build(args.connections, rng)
    now = T0 + timedelta(days=10)
    keys = [f"E{rng.randrange(args.connections):016d}" for _ in range(args.checks)]
    times = [now - timedelta(seconds=rng.randrange(86400)) for _ in range(1000)]
    pairs = [(k, times[i % 1000]) for i, k in enumerate(keys)]
    # the pipeline has the measured time as epoch seconds already (it buckets on them)
    pairs_s = [(k, int(t.timestamp())) for k, t in pairs]
    plain = {f"E{i:016d}": i for i in range(args.connections)}
    elec = Commodity.ELECTRICITY

    def run_index() -> float:
        check = index.granularities
        started = time.perf_counter()
        for meter_id, t in pairs:
            check(meter_id, elec, t, now)
        return time.perf_counter() - started

    def run_hot_path() -> float:
        # what the pipeline does inline: dict look-up of the meter's newest route, its depth
        # (integer comparisons; negative outside its installation and contract window, or on a
        # stretch without contract)
        routes = index.electricity
        depth_s = index.depth_s
        now_s = int(now.timestamp())
        started = time.perf_counter()
        for meter_id, ts in pairs_s:
            route = routes.get(meter_id)
            if route is not None:
                depth = depth_s(route, ts, now_s)
                if depth < 0:
                    # outside the newest route's window, or no contract there: look further
                    found = index.locate(routes, meter_id, ts)
                    if found is not None:
                        depth_s(found, ts, now_s)
        return time.perf_counter() - started

    def run_dict() -> float:
        get = plain.get
        started = time.perf_counter()
        for meter_id, _t in pairs_s:
            get(meter_id)
        return time.perf_counter() - started

    best = {"index": float("inf"), "hot": float("inf"), "dict": float("inf")}
    for _ in range(3):
        best["index"] = min(best["index"], run_index())
        best["hot"] = min(best["hot"], run_hot_path())
        best["dict"] = min(best["dict"], run_dict())
    n = len(pairs)
    ns = {k: v / n * 1e9 for k, v in best.items()}
    print(f"connections={args.connections} checks={n} (best of 3 runs)")
    print(f"consent check, ConsentIndex.granularities : {ns['index']:7.1f} ns/check")
    print(f"consent check, pipeline hot path           : {ns['hot']:7.1f} ns/check")
    print(f"reference: plain dict.get, same loop       : {ns['dict']:7.1f} ns/check")
    print(f"ratio hot path / dict.get                  : {ns['hot'] / ns['dict']:7.2f}")
    print(f"target ~1000 ns/check (hot path): {'met' if ns['hot'] <= 1000 else 'NOT met'}")


if __name__ == "__main__":
    main()
