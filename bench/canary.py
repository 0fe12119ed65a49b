"""Canary benchmark: the always-valid sequential test beside the single look, on the same simulated canaries.

    .venv/bin/python bench/canary.py                          # 2,000 canaries per lift and method
    .venv/bin/python bench/canary.py --sims 5000 --lifts 0,0.05 --json-out canary.json

Each canary: the champion answers right with probability ``--base`` (the demo's
~0.75), the challenger with ``--base + lift``; labels arrive one by one per arm
(balanced arms). On the same draws (same seed per lift):

  * ``single look @300``: the fixed-sample two-proportion z-test, two-sided at
    ``--alpha``, once ``--single`` (300) labels per arm are in: what the retrain
    did before (``sequential=False``);
  * ``single look @300, one-sided``: the same look, promoting at one-sided
    ``--alpha`` (the sequential test's error rate for a promotion);
  * ``single look @max``: the same test once ``--max-labelled`` labels are in;
  * ``sequential``: the mSPRT of :mod:`lakeloop.retrain.sequential` (what the
    retrain does now), looking every ``--step`` labels per arm from
    ``--min-labelled`` up to ``--max-labelled``.

Per method and lift: promotion rate (power; under lift 0 the false promotion
rate), rollback rate, mean labels per arm to the decision (the budget when
it never decides). Then the 3-in-a-row drift policy's false triggers per
10,000 stationary windows: the formula, the real ``Policy.decide`` at a high
alarm rate, and a vectorised simulation at the rates of the README.
Prints tables, ratios and JSON (``--json-out FILE`` also writes it).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))


def triggers_per_10k(a: float) -> float:
    """Expected triggers of the 3-in-a-row rule per 10,000 independent windows with alarm rate ``a``.

    The policy resets its count after a trigger, so triggers are renewals of the pattern "3 alarms in a row":
    mean waiting time (1 + a + a^2) / a^3 windows, rate a^3 (1 - a) / (1 - a^3) per window.
    """
    return 10_000 * a**3 * (1 - a) / (1 - a**3)


def policy_rate(a: float, windows: int, seed: int) -> float:
    """Triggers per 10,000 windows of the real :class:`lakeloop.monitoring.Policy` on Bernoulli(a) alarms."""
    import numpy as np

    from lakeloop.monitoring.policy import Policy

    policy, state, fired = Policy(consecutive=3, cooldown_s=0, in_flight_timeout_s=None), None, 0
    for w, drift in enumerate(np.random.default_rng(seed).random(windows) < a):
        decision, state = policy.decide(state, version=1, window=w, drift=bool(drift), now=float(w), resolved=True)
        fired += decision["trigger"]
    return fired / windows * 10_000


def simulated_rate(a: float, reps: int, seed: int, windows: int = 10_000) -> tuple[float, float]:
    """Mean and standard error of triggers per 10,000 windows: ``reps`` runs of the policy's counting rule."""
    import numpy as np

    alarms = np.random.default_rng(seed).random((reps, windows)) < a
    count = np.zeros(reps, dtype=np.int64)
    fired = np.zeros(reps, dtype=np.int64)
    for w in range(windows):
        count = np.where(alarms[:, w], count + 1, 0)
        hit = count >= 3
        fired += hit
        count[hit] = 0  # the next trigger needs a fresh run
    per = fired * (10_000 / windows)
    return float(per.mean()), float(per.std(ddof=1) / np.sqrt(reps))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sims", type=int, default=2000)
    parser.add_argument("--base", type=float, default=0.75)
    parser.add_argument("--lifts", default="0,0.02,0.05,0.10,-0.10")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--single", type=int, default=300, help="labels per arm of the single look")
    parser.add_argument("--min-labelled", type=int, default=100)
    parser.add_argument("--max-labelled", type=int, default=2000)
    parser.add_argument("--step", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)

    from lakeloop.retrain.sequential import TAU, simulate, simulate_single_look

    t0 = time.perf_counter()
    lifts = [float(x) for x in args.lifts.split(",")]
    rows = []
    for i, lift in enumerate(lifts):
        seed = args.seed + i
        methods = {
            f"single look @{args.single}": simulate_single_look(lift, base=args.base, sims=args.sims,
                                                                labelled=args.single, alpha=args.alpha, seed=seed),
            f"single look @{args.single}, one-sided": simulate_single_look(
                lift, base=args.base, sims=args.sims, labelled=args.single, alpha=args.alpha, two_sided=False,
                seed=seed),
            f"single look @{args.max_labelled}": simulate_single_look(
                lift, base=args.base, sims=args.sims, labelled=args.max_labelled, alpha=args.alpha, seed=seed),
            "sequential (mSPRT)": simulate(lift, base=args.base, sims=args.sims, min_labelled=args.min_labelled,
                                           max_labelled=args.max_labelled, step=args.step, alpha=args.alpha,
                                           seed=seed),
        }
        for name, r in methods.items():
            rows.append({"lift": lift, "method": name, "promote": r["promote"], "rollback": r["rollback"],
                         "mean_labels_per_arm": r["mean_labels"], "sims": r["sims"]})
    mc = 3 * (args.alpha * (1 - args.alpha) / args.sims) ** 0.5

    print(f"canaries: base accuracy {args.base}, {args.sims} per lift and method, alpha {args.alpha}, "
          f"sequential tau {TAU} (per-row SDs), looks every {args.step} labels per arm from "
          f"{args.min_labelled} to {args.max_labelled}")
    print(f"{'lift':>6} | {'method':<28} | {'promote':>7} | {'rollback':>8} | {'mean labels/arm':>15}")
    print("-" * 78)
    for r in rows:
        print(f"{r['lift']:>6.2f} | {r['method']:<28} | {r['promote']:>7.3f} | {r['rollback']:>8.3f} | "
              f"{r['mean_labels_per_arm']:>15.0f}")
    ratios = []
    single, seq = f"single look @{args.single}", "sequential (mSPRT)"
    print(f"\nsequential vs {single} (two-sided, the former default):")
    for lift in lifts:
        a = next(r for r in rows if r["lift"] == lift and r["method"] == single)
        b = next(r for r in rows if r["lift"] == lift and r["method"] == seq)
        right = "rollback" if lift < 0 else "promote"  # the right decision for this lift (none at 0: promote)
        ratio = {"lift": lift, "decision": right, "labels_ratio": b["mean_labels_per_arm"] / a["mean_labels_per_arm"],
                 "rate_single": a[right], "rate_sequential": b[right],
                 "rate_ratio": (b[right] / a[right]) if a[right] else None}
        ratios.append(ratio)
        print(f"  lift {lift:.2f}: labels to decision x{ratio['labels_ratio']:.2f}; {right} "
              f"{a[right]:.3f} -> {b[right]:.3f}" + (f" (x{ratio['rate_ratio']:.2f})" if ratio["rate_ratio"] else ""))
    if 0.0 in lifts:
        null = next(r for r in rows if r["lift"] == 0.0 and r["method"] == seq)
        print(f"  null promotion {null['promote']:.4f} <= alpha + 3 MC SE = {args.alpha + mc:.4f}: "
              f"{null['promote'] <= args.alpha + mc}")

    # -- the 3-in-a-row drift policy under no drift --------------------------------------------------------
    check_a = 0.3
    policy = {"formula_check": {"a": check_a, "formula": triggers_per_10k(check_a),
                                "policy_decide": policy_rate(check_a, 100_000, args.seed)}, "rates": []}
    for i, a in enumerate((args.alpha, 0.027, 0.045)):
        mean, se = simulated_rate(a, 1000, args.seed + 100 + i)  # own draws per rate
        policy["rates"].append({"a": a, "formula": triggers_per_10k(a), "approx_a3_1_minus_a": 10_000 * a**3 * (1 - a),
                                "simulated": mean, "simulated_se": se})
    print("\n3-in-a-row drift rule, false triggers per 10,000 stationary windows (independent windows, no cooldown):")
    fc = policy["formula_check"]
    print(f"  check at a={check_a}: formula {fc['formula']:.1f}, the real Policy.decide over 100,000 windows "
          f"{fc['policy_decide']:.1f}")
    print(f"  {'a':>6} | {'a^3(1-a)/(1-a^3)':>16} | {'a^3(1-a)':>8} | simulated (1,000 x 10,000 windows)")
    for r in policy["rates"]:
        print(f"  {r['a']:>6.3f} | {r['formula']:>16.3f} | {r['approx_a3_1_minus_a']:>8.3f} | "
              f"{r['simulated']:.3f} +- {r['simulated_se']:.3f}")

    report = {"bench": "canary", "python": platform.python_version(), "base": args.base, "alpha": args.alpha,
              "sims": args.sims, "tau": TAU, "min_labelled": args.min_labelled, "max_labelled": args.max_labelled,
              "step": args.step, "single": args.single, "rows": rows, "ratios": ratios, "policy": policy,
              "seconds": round(time.perf_counter() - t0, 2)}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
