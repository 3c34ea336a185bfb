"""The station registry from a GBFS feed (v2.3 and v3.x): read a feed from a ``gbfs.json`` URL (with
conditional GETs, honouring each file's ``ttl``) or from a folder of its files, decide which registry row each
of its stations is, and write them all in one transaction.

Matching a feed's station to a row, in this order (a row is matched at most once, exact matches first):
1. the same GBFS ``station_id``;
2. its ``legacy_id`` equals a row's ``legacy_id`` or a row's old ``station_id`` (Bay Wheels kept the old
   small integer as ``legacy_id`` when its ids became UUIDs);
3. its ``short_name`` equals the ``short_name`` of exactly one row (``SF-G27``).
The row then takes the feed's identifiers. A new station's integer ``id`` is its ``legacy_id``, else its
``station_id``, when that is a positive integer no station has, so the integer ids the seed API used keep
naming the same stations; else one past the largest id. A station that left the feed is kept, inactive."""

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
import msgspec
import structlog
from asyncpg.pool import PoolConnectionProxy
from msgspec import Meta

from . import queries
from .models import INT32_MAX

log = structlog.get_logger(__name__)


# What an import writes through: one connection (it opens a transaction on it).
Connection = asyncpg.Connection | PoolConnectionProxy


class FeedError(Exception):
    """The feed cannot be read or is malformed: nothing was imported, the registry is as it was."""


# What the service reads of each file; anything else a feed carries is ignored.
class _Localized(msgspec.Struct, frozen=True):
    text: str
    language: str


Text = str | list[_Localized]
Id = str | int


class _StationInfo(msgspec.Struct, frozen=True):
    station_id: Id
    name: Text
    lat: Annotated[float, Meta(ge=-90, le=90)]
    lon: Annotated[float, Meta(ge=-180, le=180)]
    short_name: Text | None = None
    legacy_id: Id | None = None
    capacity: Annotated[int, Meta(ge=0, le=INT32_MAX)] | None = None


class _StationStatus(msgspec.Struct, frozen=True):
    station_id: Id
    num_bikes_available: Annotated[int, Meta(ge=0, le=INT32_MAX)] | None = None
    num_vehicles_available: Annotated[int, Meta(ge=0, le=INT32_MAX)] | None = None  # v3's name
    num_docks_available: Annotated[int, Meta(ge=0, le=INT32_MAX)] | None = None
    is_renting: bool | int | None = None
    is_returning: bool | int | None = None
    last_reported: int | float | datetime | None = None  # POSIX seconds (v2), RFC 3339 (v3)


class _Stations(msgspec.Struct, frozen=True):
    stations: list[_StationInfo]


class _Statuses(msgspec.Struct, frozen=True):
    stations: list[_StationStatus]


class _System(msgspec.Struct, frozen=True):
    system_id: str | None = None
    name: Text | None = None
    timezone: str | None = None
    language: str | None = None  # v2
    languages: list[str] | None = None  # v3


class _FeedLink(msgspec.Struct, frozen=True):
    name: str
    url: str


class _Feeds(msgspec.Struct, frozen=True):
    feeds: list[_FeedLink]


class _File(msgspec.Struct, frozen=True):
    """Every GBFS file: ``ttl`` seconds until it may change, and its ``data``."""

    data: Any
    ttl: Annotated[int, Meta(ge=0)] = 0
    version: str | None = None


# The files an import reads: station_information is required, the others optional.
REQUIRED = "station_information"
OPTIONAL = ("station_status", "system_information")


@dataclass(frozen=True, slots=True)
class FeedStation:
    """A station of the feed as the registry keeps it: its fields in the order station_upsert_many takes."""

    gbfs_station_id: str
    short_name: str | None
    legacy_id: str | None
    name: str
    lat: float
    lon: float
    capacity: int | None
    num_bikes_available: int | None = None
    num_docks_available: int | None = None
    is_renting: bool | None = None
    is_returning: bool | None = None
    last_reported: datetime | None = None


@dataclass(frozen=True, slots=True)
class Feed:
    stations: list[FeedStation]
    system_id: str | None = None
    system_name: str | None = None
    timezone: str | None = None


def _text(value: Text | None, language: str | None) -> str | None:
    """A v2 string as is; of v3's localized list, the system's language, else the first."""
    if value is None or isinstance(value, str):
        return value
    for item in value:
        if item.language == language:
            return item.text
    return value[0].text if value else None


def _decode(name: str, raw: bytes, type_: type[Any]) -> Any:
    """The ``data`` of one file as ``type_``; malformed: a FeedError naming file and field."""
    try:
        file = msgspec.json.decode(raw, type=_File)
        return msgspec.convert(file.data, type_, strict=False)
    except msgspec.ValidationError as exc:
        raise FeedError(f"{name}: {_where(str(exc))}") from None
    except msgspec.DecodeError as exc:
        raise FeedError(f"{name}: not valid JSON ({exc})") from None


def _where(message: str) -> str:
    # msgspec names the path inside `data`, the file's own field.
    return message.replace("at `$", "at `$.data", 1) if "- at `$" in message else message


def _moment(value: int | float | datetime | None, where: str) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, ValueError, OSError):
        raise FeedError(f"station_status: {where} has last_reported {value}, not a time") from None


def _flag(value: bool | int | None) -> bool | None:
    return None if value is None else bool(value)


def parse(files: dict[str, bytes]) -> Feed:
    """A Feed from the raw files by name (``station_information`` required). Malformed: FeedError."""
    if REQUIRED not in files:
        raise FeedError(f"the feed has no {REQUIRED}")
    system = _System()
    if "system_information" in files:
        system = _decode("system_information", files["system_information"], _System)
    language = system.language or (system.languages[0] if system.languages else None)
    info = _decode(REQUIRED, files[REQUIRED], _Stations)
    statuses: dict[str, _StationStatus] = {}
    if "station_status" in files:
        status = _decode("station_status", files["station_status"], _Statuses)
        statuses = {str(s.station_id): s for s in status.stations}
    stations: list[FeedStation] = []
    seen: set[str] = set()
    for index, station in enumerate(info.stations):
        station_id = str(station.station_id)
        where = f"{REQUIRED}: station {station_id!r} (at `$.data.stations[{index}]`)"
        if not station_id or "\x00" in station_id:
            raise FeedError(f"{REQUIRED}: an empty or invalid station_id at `$.data.stations[{index}]`")
        if station_id in seen:
            raise FeedError(f"{where} appears twice")
        seen.add(station_id)
        name = _text(station.name, language)
        short_name = _text(station.short_name, language)
        legacy_id = None if station.legacy_id is None else str(station.legacy_id)
        if not name:
            raise FeedError(f"{where} has no name")
        if any("\x00" in text for text in (name, short_name or "", legacy_id or "")):
            raise FeedError(f"{where} has a NUL character in its name, short_name or legacy_id")
        s = statuses.get(station_id)
        bikes = None if s is None else _first(s.num_bikes_available, s.num_vehicles_available)
        stations.append(
            FeedStation(
                gbfs_station_id=station_id,
                short_name=short_name,
                legacy_id=legacy_id,
                name=name,
                lat=station.lat,
                lon=station.lon,
                capacity=station.capacity,
                num_bikes_available=bikes,
                num_docks_available=None if s is None else s.num_docks_available,
                is_renting=None if s is None else _flag(s.is_renting),
                is_returning=None if s is None else _flag(s.is_returning),
                last_reported=None if s is None else _moment(s.last_reported, f"station {station_id!r}"),
            )
        )
    timezone = system.timezone
    if timezone is not None and not _known_zone(timezone):
        log.warning("gbfs_unknown_timezone", timezone=timezone)
        timezone = None
    return Feed(
        stations=stations,
        system_id=system.system_id,
        system_name=_text(system.name, language),
        timezone=timezone,
    )


def _first(*values: int | None) -> int | None:
    return next((value for value in values if value is not None), None)


def _known_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def read_folder(folder: Path) -> dict[str, bytes]:
    """The GBFS files of a folder, by name (``station_information.json`` ...)."""
    if not folder.is_dir():
        raise FeedError(f"{folder} is not a folder (nor an http(s) URL)")
    return {
        name: path.read_bytes()
        for name in (REQUIRED, *OPTIONAL)
        if (path := folder / f"{name}.json").is_file()
    }


# Reading a feed over HTTP ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Cached:
    body: bytes
    etag: str | None
    last_modified: str | None
    expires: float  # time.monotonic() after which the ttl allows it to have changed


@dataclass(slots=True)
class FeedReader:
    """Reads a feed from its ``gbfs.json`` URL. Keeps each file it read with its validators (ETag,
    Last-Modified): a file is asked for again only once its ttl has run out, and then conditionally, so an
    unchanged file costs a 304 and no body."""

    url: str
    timeout: float = 10.0
    _cache: dict[str, _Cached] = field(default_factory=dict)

    async def read(self) -> tuple[dict[str, bytes], bool]:
        """The feed's files by name, and whether any of them changed since the last read."""
        import httpx

        async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=True) as client:
            discovery, changed = await self._get(client, self.url, "gbfs.json")
            links = _links(discovery)
            if REQUIRED not in links:
                raise FeedError(f"gbfs.json names no {REQUIRED} feed")
            files: dict[str, bytes] = {}
            for name in (REQUIRED, *OPTIONAL):
                if name in links:
                    files[name], fresh = await self._get(client, links[name], name)
                    changed = changed or fresh
            return files, changed

    def next_due(self) -> float:
        """Seconds until the soonest ttl runs out."""
        if not self._cache:
            return 0.0
        return max(0.0, min(entry.expires for entry in self._cache.values()) - time.monotonic())

    async def _get(self, client: Any, url: str, name: str) -> tuple[bytes, bool]:
        import httpx

        cached = self._cache.get(url)
        if cached is not None and time.monotonic() < cached.expires:
            return cached.body, False
        headers = {}
        if cached is not None and cached.etag:
            headers["If-None-Match"] = cached.etag
        if cached is not None and cached.last_modified:
            headers["If-Modified-Since"] = cached.last_modified
        try:
            response = await client.get(url, headers=headers)
        except httpx.HTTPError as exc:
            raise FeedError(f"{name}: {url} could not be read ({type(exc).__name__}: {exc})") from None
        if response.status_code == 304 and cached is not None:
            cached.expires = time.monotonic() + _ttl(cached.body)
            return cached.body, False
        if response.status_code != 200:
            raise FeedError(f"{name}: {url} answered {response.status_code}")
        body = response.content
        self._cache[url] = _Cached(
            body,
            response.headers.get("etag"),
            response.headers.get("last-modified"),
            time.monotonic() + _ttl(body),
        )
        return body, cached is None or cached.body != body


def _ttl(body: bytes) -> int:
    try:
        return msgspec.json.decode(body, type=_File).ttl
    except (msgspec.ValidationError, msgspec.DecodeError):
        return 0


def _links(raw: bytes) -> dict[str, str]:
    """Feed name -> URL from gbfs.json: v3 lists them in ``data.feeds``, v2 per language (``data.en.feeds``;
    English when there, else the first language)."""
    try:
        data = msgspec.json.decode(raw, type=_File).data
        if isinstance(data, dict) and "feeds" not in data and data:
            data = data.get("en", next(iter(data.values())))
        feeds = msgspec.convert(data, _Feeds)
    except msgspec.ValidationError as exc:
        raise FeedError(f"gbfs.json: {_where(str(exc))}") from None
    except msgspec.DecodeError as exc:
        raise FeedError(f"gbfs.json: not valid JSON ({exc})") from None
    return {feed.name: feed.url for feed in feeds.feeds}


async def read(source: str, request_timeout: float = 10.0) -> dict[str, bytes]:
    """The files of a feed at an http(s) ``gbfs.json`` URL or in a folder."""
    if source.startswith(("http://", "https://")):
        files, _ = await FeedReader(source, request_timeout).read()
        return files
    return read_folder(Path(source))


# Matching and writing --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Existing:
    id: int
    gbfs_station_id: str
    short_name: str | None
    legacy_id: str | None


def _as_id(value: str | None) -> int | None:
    """A positive int32 written canonically ("27", not "027" or "+27"), else None."""
    if value is None or not value.isascii() or not value.isdecimal() or value != str(int(value)):
        return None
    number = int(value)
    return number if 1 <= number <= INT32_MAX else None


def assign_ids(stations: Sequence[FeedStation], existing: Sequence[Existing]) -> list[int]:
    """The registry id of each feed station, matched or new (see the module's docstring)."""
    ids: list[int | None] = [None] * len(stations)
    taken: set[int] = set()

    def match(index: int, row: Existing | None) -> None:
        if ids[index] is None and row is not None and row.id not in taken:
            ids[index] = row.id
            taken.add(row.id)

    by_gbfs = {row.gbfs_station_id: row for row in existing}
    for i, station in enumerate(stations):
        match(i, by_gbfs.get(station.gbfs_station_id))
    by_legacy = {row.gbfs_station_id: row for row in existing} | {
        row.legacy_id: row for row in existing if row.legacy_id is not None
    }
    for i, station in enumerate(stations):
        if station.legacy_id is not None:
            match(i, by_legacy.get(station.legacy_id))
    short_names: dict[str, list[Existing]] = {}
    for row in existing:
        if row.short_name is not None:
            short_names.setdefault(row.short_name, []).append(row)
    for i, station in enumerate(stations):
        rows = short_names.get(station.short_name or "", [])
        if len(rows) == 1:
            match(i, rows[0])
    used = {row.id for row in existing}
    for i, station in enumerate(stations):
        if ids[i] is None:
            for candidate in (_as_id(station.legacy_id), _as_id(station.gbfs_station_id)):
                if candidate is not None and candidate not in used:
                    ids[i] = candidate
                    used.add(candidate)
                    break
    following = max(used, default=0)
    for i in range(len(ids)):
        if ids[i] is None:
            following += 1
            ids[i] = following
    if following > INT32_MAX:
        raise FeedError("no integer id left for a new station")
    return [i for i in ids if i is not None]


@dataclass(frozen=True, slots=True)
class ImportResult:
    stations: int
    created: int
    deactivated: int
    status_changed: int
    stale_changed: int


async def store(conn: Connection, feed: Feed, source: str) -> ImportResult:
    """Write the feed into the registry in one transaction: matched and new stations, those that left it
    marked inactive, the open tasks at stations whose figures changed re-flagged, the system's time zone."""
    async with conn.transaction():
        await queries.station_feed_lock(conn)
        existing = [Existing(**dict(row)) for row in await queries.station_list_matching(conn)]
        ids = assign_ids(feed.stations, existing)
        columns = [[getattr(s, f.name) for s in feed.stations] for f in dataclasses.fields(FeedStation)]
        changed = await queries.station_upsert_many(conn, ids, columns)
        await queries.station_id_sequence_sync(conn)
        deactivated = await queries.station_deactivate_missing(conn, ids)
        stale = await queries.task_stale_refresh(conn, changed) if changed else 0
        await queries.station_system_set(conn, feed.system_id, feed.system_name, feed.timezone, source)
    known = {row.id for row in existing}
    return ImportResult(
        stations=len(ids),
        created=sum(1 for i in ids if i not in known),
        deactivated=len(deactivated),
        status_changed=len(changed),
        stale_changed=stale,
    )


async def import_source(conn: Connection, source: str, request_timeout: float = 10.0) -> ImportResult:
    """Read and import a feed (the CLI's `stations import`)."""
    return await store(conn, parse(await read(source, request_timeout)), source)


def log_fields(result: ImportResult) -> dict[str, int]:
    return {
        "stations": result.stations,
        "created": result.created,
        "deactivated": result.deactivated,
        "status_changed": result.status_changed,
        "stale_changed": result.stale_changed,
    }
