"""The online store: latest feature values per entity, in a Ray actor, over the SDK and HTTP.

One detached actor per lake (``lakeloop-online-<digest of the root>``) holds, for every
online view, each entity's newest feature row that is known now, loaded from
``features.<view>``. It is the same rule the training frame applies at "now",
so online and offline agree. After a materialization the view is reloaded in a
background thread and swapped in whole, so lookups never see a gap; after a
restart the actor rebuilds everything from Delta.

HTTP (``online.host:online.port``, loopback by default)::

    GET  /healthz                          open
    GET  /v1/features                      views, entities, features, loaded_at
    POST /v1/features/{view}               {"entities": [{"customer_id": "c00001"}, ...]}
                                           or {"customer_id": ["c00001", ...]}

Every ``/v1`` call needs ``Authorization: Bearer <token>``: ``online.read_token``, else
the token generated into ``<lake>/_secrets/online_read_token`` (mode 0600) on first
start (:func:`read_token`). A lookup takes at most ``online.max_entities`` entities and
a body of at most ``online.max_bytes`` (checked from ``Content-Length`` before
reading); malformed bodies and keys are 4xx answers that say what was wrong.
"""

from __future__ import annotations

import hmac
import json
import math
import os
import secrets
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from lakeloop.errors import ConfigError, FeatureViewNotFoundError, SchemaError

if TYPE_CHECKING:
    import pandas as pd

    from lakeloop.client import Lakeloop

ACTOR_NAME = "lakeloop-online"
MISSING = "_missing"
EVENT_TIME = "_event_time"
TOKEN_FILE = "online_read_token"
_SCALARS = (str, int, float, bool)


def read_token(ll: "Lakeloop") -> str:
    """``online.read_token``, else the lake's token file (generated, mode 0600, on first use)."""
    if ll.config.online.read_token:
        return ll.config.online.read_token
    from lakeloop.credentials import private_dir, write_private

    folder = private_dir(ll.config.lake.root)
    if folder is None:
        raise ConfigError("online.read_token must be set when the lake is remote (no local file to keep it in); "
                          "set it in lakeloop.yaml or LAKELOOP_ONLINE_READ_TOKEN")
    path = folder / TOKEN_FILE
    if not path.is_file():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(secrets.token_urlsafe(32))
    return path.read_text(encoding="utf-8").strip()


def token_matches(header: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time."""
    expected = f"Bearer {token}".encode()
    return hmac.compare_digest((header or "").encode("utf-8", "replace"), expected)


class OnlineTable:
    """One view's latest values: a dict from entity key to a ready-to-send row."""

    def __init__(self, view: str, keys: list[str], ts: str, features: list[str], ttl_s: float | None,
                 frame: "pd.DataFrame", now: datetime | None = None):
        import pandas as pd

        from lakeloop.features.pit import KNOWN_AT

        self.view, self.keys, self.features, self.ttl_s = view, keys, features, ttl_s
        now = pd.Timestamp(now or datetime.now(timezone.utc))
        if len(frame):
            frame = frame[(frame[ts] <= now) & (frame[KNOWN_AT] <= now)]
            frame = frame.sort_values(keys + [ts, KNOWN_AT] + features, kind="stable")
            frame = frame.drop_duplicates(keys, keep="last")
        values = frame[features].astype(object).where(frame[features].notna(), None).to_numpy().tolist()
        stamps = frame[ts].dt.as_unit("us").astype("int64").tolist() if len(frame) else []
        self.key_kinds = {k: _kind(frame[k]) for k in keys}
        key_cols = [frame[k].tolist() for k in keys]
        key_list = key_cols[0] if len(keys) == 1 else list(zip(*key_cols))
        self.rows: dict[Any, tuple[int, list]] = dict(zip(key_list, zip(stamps, values)))
        self.loaded_at = time.time()

    def __len__(self) -> int:
        return len(self.rows)

    def key_of(self, entity: dict) -> Any:
        if not isinstance(entity, dict) or any(k not in entity for k in self.keys):
            raise SchemaError(f"each entity needs join key(s) {self.keys} for view {self.view!r}; "
                              f"got {_clip(entity)}")
        for k in self.keys:
            _check_key(self.view, k, entity[k], self.key_kinds.get(k))
        return entity[self.keys[0]] if len(self.keys) == 1 else tuple(entity[k] for k in self.keys)

    def lookup(self, entities: list[dict], now_us: int | None = None) -> list[dict]:
        """Feature rows for ``entities``; unknown or expired ones get nulls and ``_missing: true``."""
        now_us = int(time.time() * 1e6) if now_us is None else now_us
        ttl_us = None if self.ttl_s is None else self.ttl_s * 1e6
        out = []
        empty = [None] * len(self.features)
        for e in entities:
            hit = self.rows.get(self.key_of(e))
            if hit is not None and (ttl_us is None or now_us - hit[0] <= ttl_us):
                row = dict(zip(self.features, hit[1]))
                row[EVENT_TIME] = datetime.fromtimestamp(hit[0] / 1e6, tz=timezone.utc).isoformat()
                row[MISSING] = False
            else:
                row = dict(zip(self.features, empty))
                row[EVENT_TIME] = None
                row[MISSING] = True
            out.append({**{k: e[k] for k in self.keys}, **row})
        return out


def _kind(column) -> str | None:
    """What JSON type the key column takes: "string", "integer", "number", "boolean" (None: any scalar)."""
    import pandas as pd

    if not len(column):  # nothing loaded yet: the type is unknown, any scalar is looked up (and missing)
        return None
    if pd.api.types.is_bool_dtype(column):
        return "boolean"
    if pd.api.types.is_integer_dtype(column):
        return "integer"
    if pd.api.types.is_float_dtype(column):
        return "number"
    if pd.api.types.is_string_dtype(column) or pd.api.types.is_object_dtype(column):
        return "string" if all(isinstance(v, str) for v in column.head(100)) else None
    return None


def _clip(value: Any, n: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


def _check_key(view: str, key: str, value: Any, kind: str | None) -> None:
    """A join-key value must be a scalar of the key's type (a list or object is a 400, not a 500)."""
    ok = isinstance(value, _SCALARS) and not (isinstance(value, float) and not math.isfinite(value))
    if ok and kind == "string":
        ok = isinstance(value, str)
    elif ok and kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif ok and kind == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif ok and kind == "boolean":
        ok = isinstance(value, bool)
    if not ok:
        raise SchemaError(f"join key {key!r} of view {view!r} must be a{'n' if (kind or 'a')[0] in 'aeiou' else ''} "
                          f"{kind or 'string or number'}; got {type(value).__name__} {_clip(value, 60)}")


def view_shape(ll: "Lakeloop", name: str) -> tuple[list[str], str, list[str], float | None]:
    """Join keys, timestamp field, feature names and ttl (s) of a view, from the catalog.

    The catalog's spec is enough here, so the online store needs no user code.
    """
    from lakeloop.features.definitions import parse_duration

    spec = json.loads(ll.features.catalog.version(name)["spec"])
    keys: list[str] = []
    for e in spec["entities"]:
        keys += [k for k in e["join_keys"] if k not in keys]
    features = [f["output"] if f["kind"] == "aggregation" else f["name"] for f in spec["features"]]
    ttl = parse_duration(spec["ttl"])
    return keys, spec["timestamp_field"], features, None if ttl is None else ttl.total_seconds()


def load_table(ll: "Lakeloop", name: str) -> OnlineTable:
    from lakeloop.features.pit import KNOWN_AT, KNOWN_UNTIL

    keys, ts, features, ttl = view_shape(ll, name)
    table = ll.lake.table(f"features.{name}")
    cols = keys + [ts, KNOWN_AT] + features
    if table.exists():
        until = [KNOWN_UNTIL] if KNOWN_UNTIL in table.schema.names else []
        frame = table.to_pandas(columns=cols + until)
        if until:  # superseded versions are the past, not what is served
            frame = frame[frame[KNOWN_UNTIL].isna()].drop(columns=until)
    else:
        frame = _empty(cols)
    return OnlineTable(name, keys, ts, features, ttl, frame)


def _empty(cols):
    import pandas as pd

    return pd.DataFrame({c: pd.Series([], dtype="datetime64[ns, UTC]") if c.startswith("_") else [] for c in cols})


MAX_DEPTH = 8  # a lookup body is 3 levels deep; deeper nesting is refused before it is parsed


def parse_body(raw: bytes) -> Any:
    """A lookup body: UTF-8 JSON, nesting at most :data:`MAX_DEPTH`, finite numbers; else :class:`SchemaError`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SchemaError(f"request body is not valid JSON: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    depth = _max_depth(text)
    if depth > MAX_DEPTH:
        raise SchemaError(f"request body is nested {depth} levels deep; at most {MAX_DEPTH} are allowed")

    def no_constant(name):
        raise ValueError(f"{name} is not a number JSON allows")

    try:
        return json.loads(text, parse_constant=no_constant)
    except (ValueError, RecursionError) as exc:
        raise SchemaError(f"request body is not valid JSON: {exc}") from None


def _max_depth(text: str) -> int:
    """Deepest bracket nesting outside strings (stops counting past MAX_DEPTH + 1)."""
    import re

    if "[" not in text and "{" not in text:
        return 0
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    depth = deepest = 0
    for m in re.finditer(r"[\[\]{}]", stripped):
        if m.group() in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    break
        else:
            depth -= 1
    return deepest


def normalize_entities(body: Any) -> list[dict]:
    """``{"entities": [...]}``, ``{"key": [values]}``, a list of dicts, or a DataFrame -> list of dicts."""
    try:
        import pandas as pd

        if isinstance(body, pd.DataFrame):
            return body.to_dict("records")
    except ImportError:  # pragma: no cover
        pass
    if isinstance(body, list):
        if all(isinstance(e, dict) for e in body):
            return body
        raise SchemaError("entities must be objects with the view's join keys, e.g. [{\"customer_id\": \"c1\"}]")
    if isinstance(body, dict):
        if "entities" in body:
            return normalize_entities(body["entities"])
        if body and all(isinstance(v, list) for v in body.values()):
            lengths = {len(v) for v in body.values()}
            if len(lengths) != 1:
                raise SchemaError("key columns must be lists of equal length")
            names = list(body)
            return [dict(zip(names, vals)) for vals in zip(*body.values())]
    raise SchemaError('send {"entities": [{"<join key>": value, ...}]} or {"<join key>": [values]}')


def _actor_class():
    import ray

    @ray.remote(num_cpus=0.1, max_restarts=-1, max_task_retries=-1)
    class OnlineStore:
        """Holds every online view; answers the SDK (``lookup``) and HTTP."""

        def __init__(self, config: dict, host: str, port: int):
            import lakeloop

            self.ll = lakeloop.connect(config)  # secrets come back from the lake's _secrets/ file
            self.host, self.port = host, port
            self.max_entities = self.ll.config.online.max_entities
            self.max_bytes = self.ll.config.online.max_bytes
            self.token = None
            self.tables: dict[str, OnlineTable] = {}
            self.runner = None
            for info in self.ll.features.list():
                if info["online"] and info["table_version"] is not None:
                    try:
                        self.tables[info["name"]] = load_table(self.ll, info["name"])
                    except Exception:  # a view whose definition is not importable here stays offline
                        continue

        async def start_http(self) -> str:
            if self.runner is None:
                from aiohttp import web

                self.token = read_token(self.ll)  # read here, never passed in: no secret in actor arguments
                app = web.Application(client_max_size=self.max_bytes + 1)
                app.router.add_get("/healthz", self._health)
                app.router.add_get("/v1/features", self._list)
                app.router.add_post("/v1/features/{view}", self._lookup_http)
                self.runner = web.AppRunner(app, access_log=None)
                await self.runner.setup()
                await web.TCPSite(self.runner, self.host, self.port).start()
            return f"http://{self.host}:{self.port}"

        async def _health(self, request):
            from aiohttp import web

            return web.json_response({"status": "ok", "views": sorted(self.tables)})

        def _denied(self, request):
            from aiohttp import web

            if token_matches(request.headers.get("Authorization"), self.token):
                return None
            return web.json_response(
                {"error": "the online store needs 'Authorization: Bearer <token>': online.read_token, or the "
                          f"file _secrets/{TOKEN_FILE} in the lake (lakeloop.features.online.read_token(ll))"},
                status=401, headers={"WWW-Authenticate": 'Bearer realm="lakeloop-online"'})

        async def _list(self, request):
            from aiohttp import web

            denied = self._denied(request)
            if denied is not None:
                return denied
            return web.json_response(self.views())

        async def _body(self, request) -> bytes:
            """The body, at most ``online.max_bytes``: the declared length is checked before reading."""
            from aiohttp import web

            too_big = web.HTTPRequestEntityTooLarge(
                max_size=self.max_bytes, actual_size=request.content_length or self.max_bytes + 1,
                text=json.dumps({"error": f"request body over online.max_bytes ({self.max_bytes} bytes); "
                                          "send fewer entities per request"}), content_type="application/json")
            if request.content_length is not None and request.content_length > self.max_bytes:
                raise too_big
            raw = await request.content.read(self.max_bytes + 1)  # no or a lying Content-Length: read no more
            if len(raw) > self.max_bytes:
                raise too_big
            return raw

        async def _lookup_http(self, request):
            import asyncio

            from aiohttp import web

            def bad(message, status=400):
                return web.json_response({"error": message}, status=status)

            denied = self._denied(request)
            if denied is not None:
                return denied
            name = request.match_info["view"]
            raw = await self._body(request)
            try:
                body = await asyncio.to_thread(parse_body, raw)
            except SchemaError as exc:
                return bad(str(exc))
            try:
                entities = normalize_entities(body)
                if len(entities) > self.max_entities:
                    return bad(f"{len(entities)} entities in one lookup; online.max_entities allows "
                               f"{self.max_entities}: split the request", 413)
                rows = self.lookup(name, entities)
            except FeatureViewNotFoundError as exc:
                return bad(str(exc), 404)
            except SchemaError as exc:
                return bad(str(exc))
            return web.json_response({"view": name, "features": self.tables[name].features, "rows": rows})

        def views(self) -> list[dict]:
            return [{"view": n, "entities": len(t), "keys": t.keys, "features": t.features,
                     "loaded_at": t.loaded_at} for n, t in sorted(self.tables.items())]

        def lookup(self, name: str, entities: list[dict]) -> list[dict]:
            table = self.tables.get(name)
            if table is None:
                raise FeatureViewNotFoundError(
                    f"feature view {name!r} is not in the online store (online views: {sorted(self.tables)}); "
                    "is it online=True and materialized?")
            return table.lookup(entities)

        async def refresh(self, name: str) -> int:
            """Reload one view from Delta off the event loop, then swap it in whole."""
            import asyncio

            table = await asyncio.to_thread(load_table, self.ll, name)
            self.tables[name] = table
            return len(table)

        def drop(self, name: str) -> None:
            self.tables.pop(name, None)

    return OnlineStore


def actor_name(ll: "Lakeloop") -> str:
    """One online store per lake: the name carries a digest of the lake root."""
    import hashlib

    return f"{ACTOR_NAME}-{hashlib.sha256(ll.config.lake.root.encode()).hexdigest()[:10]}"


def _existing(ll: "Lakeloop"):
    ray = ll.ensure_ray()
    try:
        return ray.get_actor(actor_name(ll), namespace=ll.config.ray.namespace)
    except ValueError:
        return None


def start(ll: "Lakeloop", *, http: bool = True):
    """The online store actor (started detached if not running); with ``http``, its endpoint too."""
    ray = ll.ensure_ray()
    actor = _existing(ll)
    if actor is None:
        actor = _actor_class().options(
            name=actor_name(ll), namespace=ll.config.ray.namespace, lifetime="detached", get_if_exists=True,
        ).remote(ll.config.to_dict(), ll.config.online.host, ll.config.online.port)
    if http:
        ray.get(actor.start_http.remote())
    return actor


def stop(ll: "Lakeloop") -> bool:
    actor = _existing(ll)
    if actor is None:
        return False
    import ray

    ray.kill(actor, no_restart=True)
    return True


def url(ll: "Lakeloop") -> str:
    return f"http://{ll.config.online.host}:{ll.config.online.port}"


def notify(ll: "Lakeloop", name: str, changed=None) -> None:
    """After a materialization: reload the view in the online store, if the store runs."""
    import ray

    if not ray.is_initialized():
        return
    actor = _existing(ll)
    if actor is not None:
        ray.get(actor.refresh.remote(name))


def lookup(ll: "Lakeloop", name: str, entities) -> "pd.DataFrame":
    import pandas as pd
    import ray

    actor = start(ll, http=False)
    keys = view_shape(ll, name)[0]
    if not isinstance(entities, (pd.DataFrame, dict)) and entities and not isinstance(list(entities)[0], dict):
        if len(keys) != 1:
            raise SchemaError(f"view {name!r} has several join keys {keys}: pass dicts")
        entities = [{keys[0]: e} for e in entities]
    rows = ray.get(actor.lookup.remote(name, normalize_entities(entities)))
    return pd.DataFrame(rows)
