"""Materialize a feature view as a Ray job.

    lakeloop job submit materialize customer_stats [--full]
        [--definitions examples.fraud.features:definitions]

The view's definition comes from the lake's catalog (as applied, by any process);
``--definitions`` only applies a module first, e.g. right after a definition change.
A view with a row-level transform imports it by the reference recorded at apply,
so its module must be importable in the job (installed, or in the working_dir).
Inside a Ray job, ``lakeloop.connect()`` joins the job's cluster (RAY_ADDRESS) and
reads its lake and MLflow settings from LAKELOOP_* variables or lakeloop.yaml.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("view")
    parser.add_argument("--full", action="store_true", help="recompute instead of reading new versions only")
    parser.add_argument("--definitions",
                        help="module:attr to apply first (not needed: the catalog holds applied definitions)")
    parser.add_argument("--engine", choices=("ray", "local"), default="ray",
                        help="ray (Ray Data, the default) or local (in the job's driver; small sources)")
    parser.add_argument("--config", help="lakeloop.yaml")
    parser.add_argument("--lake", help="lake root (overrides the config's lake.root)")
    args = parser.parse_args(argv)

    import lakeloop

    ll = lakeloop.connect(args.config, **({"lake_root": args.lake} if args.lake else {}))
    if args.definitions:
        ll.features.apply(args.definitions)
    result = ll.features.materialize(args.view, full=args.full, engine=args.engine)
    print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
