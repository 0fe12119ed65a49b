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
import weakref
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from lakeloop.errors import ConfigError, FeatureViewNotFoundError, NotMaterializedError, SchemaError

if TYPE_CHECKING:
    import pandas as pd

    from lakeloop.client import Lakeloop

ACTOR_NAME = "lakeloop-online"
MISSING = "_missing"
EVENT_TIME = "_event_time"
TOKEN_FILE = "online_read_token"
_SCALARS = (str, int, float, bool)
_JSON_STR = json.encoder.encode_basestring_ascii  # what json.dumps writes for a str


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

        self.view, self.keys, self.ts, self.features, self.ttl_s = view, keys, ts, features, ttl_s
        now = pd.Timestamp(now or datetime.now(timezone.utc))
        if len(frame):
            frame = frame[(frame[ts] <= now) & (frame[KNOWN_AT] <= now)]
            frame = frame.sort_values(keys + [ts, KNOWN_AT] + features, kind="stable")
            frame = frame.drop_duplicates(keys, keep="last")
        values = frame[features].astype(object).where(frame[features].notna(), None).to_numpy().tolist()
        stamps = frame[ts].dt.as_unit("us").astype("int64").tolist() if len(frame) else []
        isos = _isos(frame[ts]) if len(frame) else []
        self.key_kinds = {k: _kind(frame[k]) for k in keys}
        key_cols = [frame[k].tolist() for k in keys]
        key_list = key_cols[0] if len(keys) == 1 else list(zip(*key_cols))
        self.rows: dict[Any, tuple[int, list, str]] = dict(zip(key_list, zip(stamps, values, isos)))
        self.loaded_at = time.time()
        self._tails: dict[Any, dict] = {}  # key -> its answer's feature part, made on first lookup
        self._frags: dict[Any, str] = {}  # key -> that part as JSON (the HTTP answer)
        self._missing = {**dict.fromkeys(features), EVENT_TIME: None, MISSING: True}
        self._missing_frag = json.dumps(self._missing, separators=(",", ":"))[1:-1]
        kind = self.key_kinds.get(keys[0]) if len(keys) == 1 else None
        self._fast_type = {"string": str, "integer": int}.get(kind)  # keys of this type need no other check

    def __len__(self) -> int:
        return len(self.rows)

    def key_of(self, entity: dict) -> Any:
        if not isinstance(entity, dict) or any(k not in entity for k in self.keys):
            raise SchemaError(f"each entity needs join key(s) {self.keys} for view {self.view!r}; "
                              f"got {_clip(entity)}")
        for k in self.keys:
            _check_key(self.view, k, entity[k], self.key_kinds.get(k))
        return entity[self.keys[0]] if len(self.keys) == 1 else tuple(entity[k] for k in self.keys)

    def _keys(self, entities: list[dict]) -> list:
        """Each entity's key, checked (one join key of the expected type: a dict read and a type test)."""
        if len(self.keys) != 1:
            return [self.key_of(e) for e in entities]
        k, fast, out = self.keys[0], self._fast_type, []
        for e in entities:
            try:
                v = e[k]
            except (KeyError, TypeError, IndexError):
                v = self.key_of(e)  # raises the SchemaError that says what is missing
            if type(v) is not fast or not isinstance(e, dict):
                v = self.key_of(e)
            out.append(v)
        return out

    def _hits(self, entities: list[dict], now_us: int | None) -> tuple[list, list]:
        """Each entity's key and (stamp_us, values), or None when unknown or older than the ttl."""
        now_us = int(time.time() * 1e6) if now_us is None else now_us
        ttl_us = None if self.ttl_s is None else self.ttl_s * 1e6
        keys = self._keys(entities)
        get = self.rows.get
        hits = [get(key) for key in keys]
        if ttl_us is not None:
            hits = [h if h is not None and now_us - h[0] <= ttl_us else None for h in hits]
        return keys, hits

    def _tail(self, key, hit) -> dict:
        """The feature part of a found entity's answer (values, ``_event_time``, ``_missing``), cached."""
        tail = self._tails.get(key)
        if tail is None:
            tail = dict(zip(self.features, hit[1]))
            tail[EVENT_TIME] = hit[2]
            tail[MISSING] = False
            self._tails[key] = tail
        return tail

    def lookup(self, entities: list[dict], now_us: int | None = None) -> list[dict]:
        """Feature rows for ``entities``; unknown or expired ones get nulls and ``_missing: true``."""
        keys, hits = self._hits(entities, now_us)
        missing = self._missing
        if len(self.keys) == 1:
            name = self.keys[0]
            return [{name: key, **(missing if hit is None else self._tail(key, hit))} for key, hit in zip(keys, hits)]
        return [{**{k: e[k] for k in self.keys}, **(missing if hit is None else self._tail(key, hit))}
                for e, key, hit in zip(entities, keys, hits)]

    def lookup_json(self, entities: list[dict], now_us: int | None = None) -> str:
        """:meth:`lookup`'s rows as a JSON array, from cached per-entity texts (the HTTP answer)."""
        keys, hits = self._hits(entities, now_us)
        parts = []
        for e, key, hit in zip(entities, keys, hits):
            if hit is None:
                parts.append(f"{self._head(e)},{self._missing_frag}}}")
                continue
            text = self._frags.get(key)
            if text is None:
                tail = json.dumps(self._tail(key, hit), separators=(",", ":"), default=str)[1:]
                text = f"{self._head(e)},{tail}"
                if self._fast_type is not None:  # str or int keys: the echoed key is the same text each time
                    self._frags[key] = text
            parts.append(text)
        return "[" + ",".join(parts) + "]"

    def _head(self, entity: dict) -> str:
        """``{"<key>":<value>`` (the object left open): the entity's join keys as JSON."""
        out = []
        for k in self.keys:
            v = entity[k]
            out.append(f"{_JSON_STR(k)}:{_JSON_STR(v) if type(v) is str else json.dumps(v)}")
        return "{" + ",".join(out)

    def lookup_columns(self, entities: list[dict], now_us: int | None = None) -> dict[str, list]:
        """The same answer as :meth:`lookup`, column by column (a DataFrame without a dict per row)."""
        _, hits = self._hits(entities, now_us)
        cols: dict[str, list] = {k: [e[k] for e in entities] for k in self.keys}
        for j, f in enumerate(self.features):
            cols[f] = [None if h is None else h[1][j] for h in hits]
        cols[EVENT_TIME] = [None if h is None else h[2] for h in hits]
        cols[MISSING] = [h is None for h in hits]
        return cols


def _isos(stamps: "pd.Series") -> list[str]:
    """ISO 8601 texts of UTC timestamps, as ``datetime.isoformat`` writes them, made in one pass at load."""
    import numpy as np

    text = np.datetime_as_string(stamps.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[us]"),
                                 unit="us")
    return [(t[:-7] if t.endswith(".000000") else t) + "+00:00" for t in text.tolist()]


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


Shape = tuple  # (join keys, timestamp field, feature names, ttl in seconds or None)


def view_shape(ll: "Lakeloop", name: str) -> tuple[list[str], str, list[str], float | None]:
    """Join keys, timestamp field, feature names and ttl (s) of a view, from the catalog.

    The catalog's spec is enough here, so the online store needs no user code.
    """
    return _shape(ll.features.catalog.version(name))


def _shape(row: dict) -> tuple[list[str], str, list[str], float | None]:
    """A view's shape from its catalog row (its JSON spec)."""
    from lakeloop.features.definitions import parse_duration

    spec = json.loads(row["spec"])
    keys: list[str] = []
    for e in spec["entities"]:
        keys += [k for k in e["join_keys"] if k not in keys]
    features = [f["output"] if f["kind"] == "aggregation" else f["name"] for f in spec["features"]]
    ttl = parse_duration(spec["ttl"])
    return keys, spec["timestamp_field"], features, None if ttl is None else ttl.total_seconds()


def load_table(ll: "Lakeloop", name: str, shape: tuple | None = None) -> OnlineTable:
    """One view's online table from ``features.<name>`` (``shape`` from the catalog unless given).

    A view applied with new features but not materialized since is a :class:`NotMaterializedError`
    (its table still holds the old columns).
    """
    from lakeloop.features.pit import KNOWN_AT, KNOWN_UNTIL

    keys, ts, features, ttl = shape if shape is not None else view_shape(ll, name)
    table = ll.lake.table(f"features.{name}")
    cols = keys + [ts, KNOWN_AT] + features
    if table.exists():
        names = table.schema.names
        lacking = [c for c in cols if c not in names]
        if lacking:
            raise NotMaterializedError(
                f"feature view {name!r} was applied with columns its table features.{name} does not hold yet "
                f"({lacking}); materialize it (lakeloop features materialize {name})")
        until = [KNOWN_UNTIL] if KNOWN_UNTIL in names else []
        frame = table.to_pandas(columns=cols + until)
        if until:  # superseded versions are the past, not what is served
            frame = frame[frame[KNOWN_UNTIL].isna()].drop(columns=until)
    else:
        frame = _empty(cols)
    return OnlineTable(name, keys, ts, features, ttl, frame)


def log_version(lake, name: str) -> int | None:
    """The newest commit of table ``name`` (None when it does not exist), read cheaply.

    Local lakes: the largest ``NNN.json`` in ``_delta_log`` (one directory listing, ~10 us), not a
    log replay. Remote lakes: delta-rs's version (a listing on the object store).
    """
    table = lake.table(name)
    path = table._local_path()
    if path is None:
        return table.version() if table.exists() else None
    try:
        names = os.listdir(os.path.join(path, "_delta_log"))
    except (FileNotFoundError, NotADirectoryError):
        return None
    newest = -1
    for n in names:
        if n.endswith(".json") and n[:-5].isdigit():
            v = int(n[:-5])
            if v > newest:
                newest = v
    return newest if newest >= 0 else None


class OnlineReader:
    """A local replica of a lake's online tables, for processes that look up often.

    Lookups are dict reads in this process (microseconds): no catalog read, no Ray hop.
    A view is loaded from ``features.<view>`` on its first lookup. A daemon thread checks,
    every ``poll_s``, the Delta log versions of the catalog and of each loaded view's table
    (a directory listing each on a local lake) and swaps in a reloaded view when either
    moved, so a materialization anywhere is seen within about ``poll_s`` plus the reload;
    one in this process is seen at once (:func:`notify` refreshes the readers here).
    A view whose definition changed is served in its new shape from the first reload
    after it was materialized; until then the last materialized table stays served.

    The ingress of a Serve app holds one (``online.reader(ll)``); so does the online
    store actor, whose HTTP endpoint answers from it.
    """

    def __init__(self, ll: "Lakeloop", *, poll_s: float | None = None):
        import threading

        self.ll = ll
        self.poll_s = poll_s if poll_s is not None else (0.25 if ll.lake.is_local else 1.0)
        self.tables: dict[str, OnlineTable] = {}
        self.errors: dict[str, str] = {}  # last failed background reload per view (the old table stays)
        self._markers: dict[str, tuple] = {}  # view -> (catalog version, table version) it was loaded at
        self._rows: dict[str, dict] = {}  # latest catalog row per view
        self._catalog_version: int | None = -2
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = None
        _READERS.add(self)

    # -- lookups -------------------------------------------------------------------
    def table(self, name: str) -> OnlineTable:
        """The replica of view ``name`` (loaded on first use)."""
        table = self.tables.get(name)
        if table is None:
            table = self.refresh(name)
        return table

    def lookup(self, name: str, entities: list[dict]) -> list[dict]:
        """Feature rows for ``entities`` (dicts with the join keys), as the actor's ``lookup`` gives them."""
        return self.table(name).lookup(entities)

    def shape(self, name: str) -> tuple[list[str], str, list[str], float | None]:
        """Join keys, timestamp field, features and ttl of the loaded view ``name``."""
        t = self.table(name)
        return t.keys, t.ts, t.features, t.ttl_s

    def views(self) -> list[dict]:
        return [{"view": n, "entities": len(t), "keys": t.keys, "features": t.features,
                 "loaded_at": t.loaded_at} for n, t in sorted(self.tables.items())]

    # -- loading ---------------------------------------------------------------------
    def _catalog(self, force: bool = False) -> int | None:
        """Re-read the catalog's view rows when its Delta version moved; returns that version."""
        from lakeloop.features.catalog import VIEWS

        version = log_version(self.ll.lake, VIEWS)
        if force or version != self._catalog_version:
            rows = self.ll.features.catalog.view_rows()
            latest = {} if rows.empty else {r["name"]: r for r in rows.drop_duplicates("name", keep="last")
                                            .to_dict("records")}
            self._rows, self._catalog_version = latest, version
        return version

    def refresh(self, name: str, *, force: bool = True) -> OnlineTable:
        """Load view ``name`` now (``force=False``: only when its catalog row or table moved)."""
        with self._lock:
            self._catalog()
            row = self._rows.get(name)
            if row is None:
                raise FeatureViewNotFoundError(
                    f"feature view {name!r} is not in the catalog (views: {sorted(self._rows)}); "
                    "apply its definitions first (lakeloop features apply module:attr)")
            if not bool(row["online"]):
                raise FeatureViewNotFoundError(
                    f"feature view {name!r} is not online (online=False in its definition): it is "
                    "served offline only (training_frame)")
            shape = _shape(row)
            marker = (int(row["version"]), log_version(self.ll.lake, f"features.{name}"))
            old = self.tables.get(name)
            if old is not None and not force and self._markers.get(name) == marker:
                return old
            if marker[1] is None:
                raise NotMaterializedError(
                    f"feature view {name!r} is not materialized yet, so the online store has no values for it; "
                    f"materialize it (lakeloop features materialize {name})")
            table = load_table(self.ll, name, shape)
            self.tables[name] = table
            self._markers[name] = marker
            self.errors.pop(name, None)
            self._ensure_thread()
            return table

    def drop(self, name: str) -> None:
        with self._lock:
            self.tables.pop(name, None)
            self._markers.pop(name, None)

    def check(self) -> list[str]:
        """Reload every loaded view whose catalog row or table moved; returns their names."""
        changed = []
        for name in list(self.tables):
            before = self.tables.get(name)
            try:
                if self.refresh(name, force=False) is not before:
                    changed.append(name)
            except Exception as exc:  # e.g. applied, not yet materialized: keep serving the old table
                self.errors[name] = str(exc)[:300]
        return changed

    def _ensure_thread(self) -> None:
        import threading

        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=_poll, args=(weakref.ref(self), self._stop, self.poll_s),
                                            name="lakeloop-online-reader", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the background check (the loaded tables stay readable)."""
        self._stop.set()
        _READERS.discard(self)


def _poll(ref: "weakref.ref[OnlineReader]", stop, poll_s: float) -> None:
    """The reader's version check; holds it weakly, so a reader nobody uses is collected and this ends."""
    while not stop.wait(poll_s):
        r = ref()
        if r is None:
            return
        r.check()
        del r


_READERS: "weakref.WeakSet[OnlineReader]" = weakref.WeakSet()
_ATTR = "_online_reader"


def reader(ll: "Lakeloop") -> OnlineReader:
    """This process's :class:`OnlineReader` for ``ll`` (made on first use, kept on ``ll``, then reused)."""
    r = ll.__dict__.get(_ATTR)
    if r is None or r._stop.is_set():
        r = OnlineReader(ll)
        ll.__dict__[_ATTR] = r  # lives as long as the client: no global registry keeps either alive
    return r


def _empty(cols):
    import pandas as pd

    return pd.DataFrame({c: pd.Series([], dtype="datetime64[ns, UTC]") if c.startswith("_") else [] for c in cols})


INLINE_PARSE_BYTES = 16_384  # bodies up to this are parsed on the event loop
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
            self.reader = OnlineReader(self.ll)  # HTTP and lookup() answer from it; it follows the lake
            self.runner = None
            for info in self.ll.features.list():
                if info["online"] and info["table_version"] is not None:
                    try:
                        self.reader.refresh(info["name"])
                    except Exception:  # a view whose table cannot be loaded here stays offline
                        continue

        @property
        def tables(self) -> dict[str, OnlineTable]:
            return self.reader.tables

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
            """One lookup: small bodies are parsed on the loop (a thread hop costs more than they do)."""
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
                body = parse_body(raw) if len(raw) <= INLINE_PARSE_BYTES else await asyncio.to_thread(parse_body, raw)
            except SchemaError as exc:
                return bad(str(exc))
            try:
                entities = normalize_entities(body)
                if len(entities) > self.max_entities:
                    return bad(f"{len(entities)} entities in one lookup; online.max_entities allows "
                               f"{self.max_entities}: split the request", 413)
                table = self.reader.table(name)
                rows = table.lookup_json(entities)
            except FeatureViewNotFoundError as exc:
                return bad(str(exc), 404)
            except NotMaterializedError as exc:
                return bad(str(exc), 409)
            except SchemaError as exc:
                return bad(str(exc))
            head = json.dumps({"view": name, "features": table.features}, separators=(",", ":"))[:-1]
            return web.Response(text=f'{head},"rows":{rows}}}', content_type="application/json")

        def views(self) -> list[dict]:
            return self.reader.views()

        def lookup(self, name: str, entities: list[dict]) -> list[dict]:
            return self.reader.lookup(name, entities)

        async def refresh(self, name: str) -> int:
            """Reload one view from Delta off the event loop, then swap it in whole."""
            import asyncio

            table = await asyncio.to_thread(self.reader.refresh, name)
            return len(table)

        def drop(self, name: str) -> None:
            self.reader.drop(name)

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
    """After a materialization: reload the view in this process's readers and in the online store, if it runs."""
    for r in list(_READERS):
        if r.ll.config.lake.root == ll.config.lake.root and name in r.tables:
            r.refresh(name)
    import ray

    if not ray.is_initialized():
        return
    actor = _existing(ll)
    if actor is not None:
        ray.get(actor.refresh.remote(name))


def lookup(ll: "Lakeloop", name: str, entities, now=None) -> "pd.DataFrame":
    """Feature values for ``entities`` from this process's replica (:func:`reader`): no Ray hop.

    ``now``: the time each value's age is measured at against the view's ttl (default the clock)."""
    import pandas as pd

    from lakeloop.features.definitions import utc_timestamp

    now_us = None
    if now is not None:
        try:
            stamp = utc_timestamp(now)
        except (ValueError, TypeError) as exc:
            raise SchemaError(f"now must be a timestamp, got {_clip(now)}: {exc}") from None
        if stamp is pd.NaT:
            raise SchemaError("now must be a timestamp, got a missing value (NaT)")
        now_us = stamp.value // 1000

    table = reader(ll).table(name)
    if not isinstance(entities, (pd.DataFrame, dict)):
        entities = list(entities)
        if entities and not isinstance(entities[0], dict):
            if len(table.keys) != 1:
                raise SchemaError(f"view {name!r} has several join keys {table.keys}: pass dicts")
            key = table.keys[0]
            entities = [{key: e} for e in entities]
    return pd.DataFrame(table.lookup_columns(normalize_entities(entities), now_us))
