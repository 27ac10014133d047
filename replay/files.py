"""Any CSV / JSONL / Parquet file as typed events, given a column mapping.

A mapping says which event type the rows become and where each field comes from::

    # orders.mapping.yaml (YAML or JSON; paths are relative to this file)
    file: orders.csv.gz          # .csv / .jsonl / .ndjson / .parquet, optionally .gz (not parquet)
    topic: orders                # clicks | orders | fraud-labels | catalog
    namespace: shop              # ids become "shop:<user>" / "shop-<order>" (see replay.sources)
    map:                         # event field -> column ("@row" = 0-based data row number)
      order_id: InvoiceNo
      user_id: CustomerID
      ts: InvoiceDate
    lines:                       # orders only: each row is an order line, rows grouped by order_id
      item_id: StockCode
      price: UnitPrice
      quantity: Quantity
    const: {currency: GBP}       # fixed field values
    values:                      # value maps; a raw value mapped to null skips the row (counted)
      action: {clicks: view, carts: add_to_cart, orders: purchase, fav: null}
    time: {unit: iso}            # s | ms | us | ns (numbers), iso, or a strptime format; naive = UTC
    sort: false                  # true: load the file and sort it by time (stable)
    on_invalid: fail             # fail | skip (invalid rows counted and up to 5 examples kept)
    clock: shop                  # optional: sources with the same clock share one time shift

``python -m replay --file F --topic T --map field=column,...`` builds the same thing from
the command line (see ``--help``). A JSONL column may be a dotted path into nested objects
(``customer.id``). Every row is validated by the event model of :mod:`streamscore.events`;
a CSV whose header lacks a mapped column is refused before any row is read.

Namespaces follow :mod:`replay.sources`: entity ids (user, item, category) become
``"<ns>:<id>"`` and record ids (click ``event_id``, ``order_id``) ``"<ns>-<id>"``; device,
IP and card ids are kept as they are. Clicks without a mapped ``event_id`` use the row
number. Orders whose ``amount`` is not mapped get the sum of their lines (rounded to 4
decimals). An order's fields come from its first row and its time is that row's time.
"""

from __future__ import annotations

import calendar
import csv
import gzip
import io
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

from pydantic import ValidationError

from streamscore.events import CatalogItem, Click, FraudLabel, Order, OrderLine

KINDS = {"clicks": Click, "orders": Order, "fraud-labels": FraudLabel, "catalog": CatalogItem}
TIME_FIELDS = ("ts", "account_created_at")
UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}  # divisors to seconds
ENTITY_FIELDS = {"clicks": ("user_id", "item_id", "category_id"), "orders": ("user_id",),
                 "fraud-labels": (), "catalog": ("item_id", "category_id")}
RECORD_FIELDS = {"clicks": ("event_id",), "orders": ("order_id",), "fraud-labels": ("order_id",), "catalog": ()}
LINE_FIELDS = ("item_id", "price", "quantity")
ROW = "@row"


class MappingError(ValueError):
    """The mapping or the file cannot be used (unknown field, missing column, unsorted file...)."""


@dataclass
class FileSource:
    """One file and how its rows become events of ``topic`` (a kind: clicks, orders, ...)."""

    file: str
    topic: str
    map: dict[str, str]
    namespace: Optional[str] = None
    const: dict[str, Any] = field(default_factory=dict)
    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    lines: dict[str, str] = field(default_factory=dict)
    time: dict[str, str] = field(default_factory=lambda: {"unit": "s"})
    sort: bool = False
    on_invalid: str = "fail"
    format: Optional[str] = None
    delimiter: str = ","
    clock: Optional[str] = None  # sources sharing a clock share one time shift (default: the file)

    def __post_init__(self):
        if self.topic not in KINDS:
            raise MappingError(f"topic must be one of {sorted(KINDS)}, not {self.topic!r}")
        model = KINDS[self.topic]
        allowed = set(model.model_fields) - ({"items"} if self.topic == "orders" else set())
        for name in list(self.map) + list(self.const) + list(self.values):
            if name not in allowed:
                raise MappingError(f"{self.topic}: unknown field {name!r} (fields: {', '.join(sorted(allowed))})")
        if self.lines:
            if self.topic != "orders":
                raise MappingError("'lines' is only for orders")
            unknown = set(self.lines) - set(LINE_FIELDS)
            if unknown or not set(LINE_FIELDS) <= set(self.lines):
                raise MappingError(f"'lines' maps exactly {', '.join(LINE_FIELDS)} (got {sorted(self.lines)})")
        if self.topic == "clicks":
            self.map.setdefault("event_id", ROW)
        required = {n for n, f in model.model_fields.items() if f.is_required()}
        missing = required - set(self.map) - set(self.const)
        if self.topic == "orders" and self.lines:
            missing.discard("amount")
        if missing:
            raise MappingError(f"{self.topic}: required field(s) {', '.join(sorted(missing))} not mapped")
        if self.on_invalid not in ("fail", "skip"):
            raise MappingError("on_invalid must be 'fail' or 'skip'")
        if self.namespace is not None and (not self.namespace or any(c in self.namespace for c in ":- ")):
            raise MappingError(f"namespace {self.namespace!r} must be non-empty without ':', '-' or spaces")
        self.format = self.format or _format_of(self.file)
        _time_converter(self.time)  # validate early

    def to_spec(self) -> dict:
        """A JSON-able description (for checkpoints and summaries)."""
        path = Path(self.file)
        spec = {k: v for k, v in self.__dict__.items()}
        spec["file"] = str(path.resolve())
        return spec


def _format_of(path: str) -> str:
    name = path.lower().removesuffix(".gz")
    for ext, fmt in ((".csv", "csv"), (".tsv", "csv"), (".jsonl", "jsonl"), (".ndjson", "jsonl"),
                     (".json", "jsonl"), (".parquet", "parquet"), (".pq", "parquet")):
        if name.endswith(ext):
            return fmt
    raise MappingError(f"{path}: cannot tell the format from the name; set format: csv | jsonl | parquet")


def load_mapping(path, overrides: Optional[dict] = None) -> list[FileSource]:
    """The sources of a YAML/JSON mapping file: one source, or ``sources: [...]``."""
    path = Path(path)
    text = path.read_text()
    if path.suffix.lower() == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise MappingError(f"{path}: expected a mapping object")
    entries = data["sources"] if "sources" in data else [data]
    out = []
    for entry in entries:
        entry = {**entry, **(overrides or {})}
        if "file" not in entry:
            raise MappingError(f"{path}: a source without 'file'")
        f = Path(entry["file"])
        entry["file"] = str(f if f.is_absolute() else path.parent / f)
        try:
            out.append(FileSource(**entry))
        except TypeError as exc:
            raise MappingError(f"{path}: {exc}") from None
    return out


def parse_pairs(text: str, what: str) -> dict[str, str]:
    """``"a=b,c=d"`` -> ``{"a": "b", "c": "d"}`` (for --map / --const)."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise MappingError(f"{what}: expected field=value, got {part!r}")
        out[name.strip()] = value.strip()
    return out


def parse_values(text: str) -> dict[str, dict[str, Any]]:
    """``"action=clicks:view;carts:add_to_cart"`` -> ``{"action": {...}}``; ``raw:`` (empty) = skip."""
    out: dict[str, dict[str, Any]] = {}
    field_name, sep, pairs = text.partition("=")
    if not sep:
        raise MappingError(f"--values: expected field=raw:value;raw:value, got {text!r}")
    table = out.setdefault(field_name.strip(), {})
    for pair in filter(None, (p.strip() for p in pairs.split(";"))):
        raw, sep, value = pair.partition(":")
        if not sep:
            raise MappingError(f"--values: expected raw:value, got {pair!r}")
        table[raw] = value or None
    return out


# --- readers ------------------------------------------------------------------------------

def _open_text(path: Path):
    if path.suffix.lower() == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _rows(src: FileSource, columns: set[str]) -> Iterator[dict]:
    path = Path(src.file)
    if src.format == "csv":
        delimiter = "\t" if path.name.lower().removesuffix(".gz").endswith(".tsv") else src.delimiter
        with _open_text(path) as fh:
            reader = csv.DictReader(fh, delimiter=delimiter)
            header = set(reader.fieldnames or ())
            missing = columns - header
            if missing:
                raise MappingError(f"{path}: column(s) {', '.join(sorted(missing))} not in the header "
                                   f"({', '.join(reader.fieldnames or [])})")
            yield from reader
    elif src.format == "jsonl":
        with _open_text(path) as fh:
            for n, line in enumerate(fh):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise MappingError(f"{path} line {n + 1}: not JSON ({exc})") from None
                    if not isinstance(row, dict):
                        raise MappingError(f"{path} line {n + 1}: not a JSON object")
                    yield row
    elif src.format == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        missing = {c.split(".")[0] for c in columns} - set(pf.schema_arrow.names)
        if missing:
            raise MappingError(f"{path}: column(s) {', '.join(sorted(missing))} not in the file "
                               f"({', '.join(pf.schema_arrow.names)})")
        for batch in pf.iter_batches(batch_size=10_000):
            yield from batch.to_pylist()
    else:
        raise MappingError(f"unknown format {src.format!r}")


def _get(row: dict, column: str):
    if column in row:
        return row[column]
    if "." in column:
        value: Any = row
        for part in column.split("."):
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
        return value
    return None


def _blank(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or \
        (isinstance(value, float) and math.isnan(value))


def _as_id(value) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 17850.0 (a float column with gaps) -> "17850"
    return str(value).strip()


def _time_converter(spec: dict):
    unit = spec.get("unit", "s")
    tz = spec.get("tz", "UTC")
    fmt = spec.get("format")
    if tz != "UTC":
        from zoneinfo import ZoneInfo

        zone = ZoneInfo(tz)
    else:
        zone = timezone.utc
    if fmt:
        def convert(value):
            if tz == "UTC":
                return float(calendar.timegm(time.strptime(str(value).strip(), fmt)))
            return datetime.strptime(str(value).strip(), fmt).replace(tzinfo=zone).timestamp()
        return convert
    if unit == "iso":
        def convert(value):
            if isinstance(value, datetime):
                dt = value
            else:
                dt = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
            return (dt if dt.tzinfo else dt.replace(tzinfo=zone)).timestamp()
        return convert
    if unit not in UNITS:
        raise MappingError(f"time unit must be one of {', '.join(UNITS)}, iso, or a format: got {unit!r}")
    divisor = UNITS[unit]

    def convert(value):
        if isinstance(value, datetime):
            return (value if value.tzinfo else value.replace(tzinfo=zone)).timestamp()
        if isinstance(value, str):
            value = value.strip()
            value = int(value) if value.lstrip("-").isdigit() else float(value)
        return value / divisor  # int / int is correctly rounded: 1659304800133 ms -> 1659304800.133
    return convert


# --- rows -> events ---------------------------------------------------------------------

class _Converter:
    def __init__(self, src: FileSource, counts: Counter):
        self.src = src
        self.counts = counts
        self.model = KINDS[src.topic]
        self.to_seconds = _time_converter(src.time)
        self.entity = set(ENTITY_FIELDS[src.topic])
        self.record = set(RECORD_FIELDS[src.topic])
        self.str_fields = {n for n, f in self.model.model_fields.items()
                           if f.annotation in (str, Optional[str])}
        self.examples: list[str] = []

    def _ns(self, name: str, value: str) -> str:
        ns = self.src.namespace
        if ns is None:
            return value
        if name in self.entity:
            return f"{ns}:{value}"
        if name in self.record:
            return f"{ns}-{value}"
        return value

    def fields(self, row: dict, rowno: int) -> Optional[dict]:
        """Event fields of one row (before validation); None when a value map skips the row."""
        out: dict[str, Any] = dict(self.src.const)
        for name, column in self.src.map.items():
            value = rowno if column == ROW else _get(row, column)
            if _blank(value):
                continue  # unset (or the const value, if one is given)
            if name in self.src.values:
                table = self.src.values[name]
                raw = _as_id(value)
                if raw not in table:
                    raise ValueError(f"{name}: value {raw!r} is not in the value map ({', '.join(table)})")
                value = table[raw]
                if value is None:
                    self.counts[f"skipped_{name}_{raw}"] += 1
                    return None
            if name in TIME_FIELDS:
                value = self.to_seconds(value)
            elif name in self.str_fields:
                value = self._ns(name, _as_id(value))
            out[name] = value
        return out

    def line(self, row: dict) -> dict:
        values = {name: _get(row, column) for name, column in self.src.lines.items()}
        if not _blank(values["item_id"]):
            item = _as_id(values["item_id"])
            values["item_id"] = item if self.src.namespace is None else f"{self.src.namespace}:{item}"
        return values

    def invalid(self, rowno: int, exc: Exception) -> None:
        msg = f"row {rowno}: {exc}"
        if isinstance(exc, ValidationError):
            msg = f"row {rowno}: " + "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()[:3])
        if self.src.on_invalid == "fail":
            raise MappingError(f"{self.src.file}: {msg} (on_invalid: skip to skip such rows)")
        self.counts["invalid_rows"] += 1
        if len(self.examples) < 5:
            self.examples.append(msg)


def read_file(src: FileSource, counts: Optional[Counter] = None, limit: Optional[int] = None,
              examples: Optional[list] = None) -> Iterator:
    """The events of ``src`` in time order (see the module doc). ``counts`` gets what was
    skipped and why; ``examples`` the first invalid rows (with ``on_invalid: skip``)."""
    counts = Counter() if counts is None else counts
    conv = _Converter(src, counts)
    columns = {c for c in list(src.map.values()) + list(src.lines.values()) if c != ROW}
    events = _orders_with_lines(src, conv, columns) if src.lines else _single_rows(src, conv, columns)
    if src.sort:
        events = iter(sorted(events, key=lambda e: e.ts))  # stable: ties keep file order
    prev, n = -math.inf, 0
    try:
        for ev in events:
            if ev.ts < prev:
                raise MappingError(f"{src.file}: time goes backwards ({ev.ts} < {prev}) at {ev!r}; "
                                   "the file is not sorted by time: set sort: true (--sort)")
            prev = ev.ts
            yield ev
            n += 1
            if limit is not None and n >= limit:
                return
    finally:
        if examples is not None:
            examples.extend(conv.examples)


def _single_rows(src: FileSource, conv: _Converter, columns: set[str]):
    for rowno, row in enumerate(_rows(src, columns)):
        try:
            values = conv.fields(row, rowno)
            if values is None:
                continue
            yield conv.model.model_validate(values)
        except (ValidationError, ValueError, TypeError) as exc:
            if isinstance(exc, MappingError):
                raise
            conv.invalid(rowno, exc)


def _orders_with_lines(src: FileSource, conv: _Converter, columns: set[str]):
    """Rows are order lines: one Order per order_id (contiguous rows, or any rows with sort)."""
    id_column = src.map["order_id"]
    groups: dict[str, list] = {}
    done: set[str] = set()
    current = None

    def build(rows: list[tuple[int, dict]]):
        rowno, head = rows[0]
        try:
            values = conv.fields(head, rowno)
            if values is None:
                return None
            items = [OrderLine.model_validate(conv.line(r)) for _, r in rows]
            values["items"] = items
            values.setdefault("amount", round(sum(i.price * i.quantity for i in items), 4))
            return Order.model_validate(values)
        except (ValidationError, ValueError, TypeError) as exc:
            if isinstance(exc, MappingError):
                raise
            conv.invalid(rowno, exc)
            return None

    for rowno, row in enumerate(_rows(src, columns)):
        oid = _as_id(_get(row, id_column)) if not _blank(_get(row, id_column)) else f"@{rowno}"
        if src.sort:
            groups.setdefault(oid, []).append((rowno, row))
            continue
        if oid != current:
            if current is not None:
                if (order := build(groups.pop(current))) is not None:
                    yield order
                done.add(current)
            if oid in done:
                raise MappingError(f"{src.file}: the lines of order {oid!r} are not contiguous (row {rowno}); "
                                   "set sort: true (--sort)")
            current = oid
            groups[oid] = []
        groups[oid].append((rowno, row))
    for rows in groups.values():
        if (order := build(rows)) is not None:
            yield order


# --- command-line options (streamscore replay, streamscore train-recommender) -------------------

def add_file_arguments(f, topic: bool = True) -> None:
    """The ``--mapping`` / ``--file`` options on an argparse parser or group (``topic``: offer
    ``--topic``; without it the file's rows are clicks)."""
    f.add_argument("--mapping", action="append", default=[], metavar="FILE",
                   help="YAML/JSON mapping of one or more files (repeatable; see replay/files.py)")
    f.add_argument("--file", help="one file, mapped by the options below")
    if topic:
        f.add_argument("--topic", choices=["clicks", "orders", "fraud-labels", "catalog"],
                       help="what the file's rows are (the topic name comes from the TOPIC_* settings)")
    f.add_argument("--map", default="", metavar="FIELD=COLUMN,...",
                   help="event field -> column, e.g. order_id=InvoiceNo,user_id=CustomerID,ts=InvoiceDate "
                        "('@row' = row number)")
    f.add_argument("--lines", default="", metavar="item_id=COL,price=COL,quantity=COL",
                   help="orders: rows are order lines grouped by order_id")
    f.add_argument("--const", default="", metavar="FIELD=VALUE,...", help="fixed values, e.g. currency=GBP")
    f.add_argument("--values", action="append", default=[], metavar="FIELD=RAW:VALUE;RAW:VALUE",
                   help="value map, e.g. action=clicks:view;carts:add_to_cart;orders:purchase (RAW: = skip row)")
    f.add_argument("--time-unit", default="s", help="ts column: s, ms, us, ns or iso (default s)")
    f.add_argument("--time-format", default=None, help="ts column as a strptime format, e.g. '%%Y-%%m-%%d %%H:%%M'")
    f.add_argument("--tz", default="UTC", help="zone of naive times (default UTC)")
    f.add_argument("--namespace", default=None, help="id namespace: users/items 'NS:id', records 'NS-id'")
    f.add_argument("--sort", action="store_true", help="the file is not time-sorted: load and sort it (stable)")
    f.add_argument("--on-invalid", choices=["fail", "skip"], default="fail",
                   help="an invalid row stops the run (fail) or is skipped and counted (skip)")


def file_sources(args, topic: Optional[str] = None) -> list[FileSource]:
    """The sources named by :func:`add_file_arguments`' options (``topic``: the fixed kind of a
    parser without ``--topic``)."""
    out = []
    for path in args.mapping:
        out += load_mapping(path)
    kind = topic or getattr(args, "topic", None)
    if args.file:
        if not kind:
            raise MappingError("--file needs --topic")
        values: dict = {}
        for v in args.values:
            for k, table in parse_values(v).items():
                values.setdefault(k, {}).update(table)
        time_spec = {"unit": args.time_unit, "tz": args.tz}
        if args.time_format:
            time_spec["format"] = args.time_format
        out.append(FileSource(file=args.file, topic=kind, map=parse_pairs(args.map, "--map"),
                              namespace=args.namespace, const=parse_pairs(args.const, "--const"), values=values,
                              lines=parse_pairs(args.lines, "--lines"), time=time_spec, sort=args.sort,
                              on_invalid=args.on_invalid))
    elif args.map or getattr(args, "topic", None) or args.lines:
        raise MappingError("--map/--topic/--lines describe a --file")
    return out
