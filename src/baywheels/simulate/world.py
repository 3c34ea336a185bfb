"""The simulated bike-share: stations from the registry (or made up in the Bay Area), riders who follow the
commute, bikes that are never created or lost. No HTTP here: the ML engine reads this world, the vans change
it. ``gbfs_files`` writes made-up stations as a GBFS feed, for the registry to import (``make demo``)."""

import heapq
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import msgspec

from .. import models

Kind = Literal["residential", "downtown"]
KINDS: tuple[Kind, ...] = ("residential", "downtown")

# The Bay Area's bounding box (latitude, longitude), and a downtown in each of its three big cities with
# the share of the stations it gets.
SOUTH, NORTH, WEST, EAST = 37.2, 38.0, -122.55, -121.75
CITIES = (
    ("San Francisco", 37.7897, -122.3972, 0.5),
    ("Oakland", 37.8044, -122.2712, 0.25),
    ("San Jose", 37.3352, -121.8811, 0.25),
)
DOWNTOWN_SHARE = 0.3
RIDE_KMH = 14.0
# Rides per station per minute: a floor all day, and the commute's peak (residential out in the morning,
# downtown out in the evening), as gaussians in the hour of day.
BASE_RATE = 0.015
PEAK_RATE = 0.22
MORNING, EVENING, PEAK_WIDTH = 8.25, 17.5, 1.1
# During a peak this share of rides goes the commute's way (to downtown in the morning, home in the evening).
COMMUTE_SHARE = 0.8
# A registry's station without a capacity is given this one.
DEFAULT_CAPACITY = 20
SHORT = {"San Francisco": "SF", "Oakland": "OK", "San Jose": "SJ"}


@dataclass
class Station:
    id: int
    city: int
    kind: Kind
    lat: float
    lon: float
    capacity: int
    bikes: int


def km(a: Station, b: Station) -> float:
    """Distance by the haversine formula."""
    return km_between(a.lat, a.lon, b.lat, b.lon)


def km_between(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(h))


def peak(hour: float, center: float) -> float:
    return math.exp(-(((hour - center) / PEAK_WIDTH) ** 2))


@dataclass
class World:
    """Stations and riders; time is in minutes since midnight of the simulated day."""

    stations: list[Station]
    rng: random.Random
    minute: int
    rides: int = 0
    unmet: int = 0  # riders who found their station empty
    ran_empty: set[int] = field(default_factory=set)
    _arrivals: list[tuple[float, int, int]] = field(default_factory=list)  # (minute, seq, station)
    _seq: int = 0
    _by_id: dict[int, Station] = field(default_factory=dict)
    _by_city: dict[int, list[Station]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._by_id = {s.id: s for s in self.stations}
        self._by_city = {city: [s for s in self.stations if s.city == city] for city in range(len(CITIES))}

    @classmethod
    def made_up(cls, n: int, seed: int, start_minute: int) -> "World":
        rng = random.Random(seed)
        stations = []
        for i in range(n):
            city = rng.choices(range(len(CITIES)), weights=[c[3] for c in CITIES])[0]
            _, lat, lon, _ = CITIES[city]
            kind: Kind = "downtown" if rng.random() < DOWNTOWN_SHARE else "residential"
            spread = 0.008 if kind == "downtown" else 0.035  # degrees: about 1 km, about 4 km
            capacity = rng.randint(15, 35)
            stations.append(
                Station(
                    id=i + 1,
                    city=city,
                    kind=kind,
                    lat=min(NORTH, max(SOUTH, rng.gauss(lat, spread))),
                    lon=min(EAST, max(WEST, rng.gauss(lon, spread))),
                    capacity=capacity,
                    bikes=round(capacity * rng.uniform(0.35, 0.75)),
                )
            )
        return cls(stations, rng, start_minute)

    @classmethod
    def from_registry(cls, registry: Sequence[models.Station], seed: int, start_minute: int) -> "World":
        """The registry's stations, each in the nearest of the three cities; the ones nearest their city's
        downtown (DOWNTOWN_SHARE of them) are its downtown, the rest residential. Bikes as the registry last
        heard, else a random share of the docks."""
        rng = random.Random(seed)
        stations = []
        for s in registry:
            city = min(range(len(CITIES)), key=lambda c: km_between(s.lat, s.lon, CITIES[c][1], CITIES[c][2]))
            capacity = s.capacity or DEFAULT_CAPACITY
            bikes = s.num_bikes_available
            if bikes is None:
                bikes = round(capacity * rng.uniform(0.35, 0.75))
            stations.append(Station(s.id, city, "residential", s.lat, s.lon, capacity, min(bikes, capacity)))
        for city, (_, lat, lon, _) in enumerate(CITIES):
            mine = sorted(
                (s for s in stations if s.city == city), key=lambda s: km_between(s.lat, s.lon, lat, lon)
            )
            for station in mine[: round(DOWNTOWN_SHARE * len(mine))]:
                station.kind = "downtown"
        return cls(stations, rng, start_minute)

    def station(self, station_id: int) -> Station:
        return self._by_id[station_id]

    def in_city(self, city: int) -> list[Station]:
        return self._by_city[city]

    def out_rate(self, kind: Kind, minute: float) -> float:
        hour = (minute / 60) % 24
        return BASE_RATE + PEAK_RATE * peak(hour, MORNING if kind == "residential" else EVENING)

    @staticmethod
    def commute(kind: Kind, minute: float) -> tuple[Kind, float]:
        """Where a ride from a station of this kind heads: the other kind with the returned probability,
        else any station of its city."""
        hour = (minute / 60) % 24
        if kind == "residential":
            return "downtown", COMMUTE_SHARE * peak(hour, MORNING)
        return "residential", COMMUTE_SHARE * peak(hour, EVENING)

    def advance_to(self, minute: int) -> None:
        """Riders of every whole minute up to ``minute``: departures, then the rides that end by then."""
        while self.minute < minute:
            self.minute += 1
            for station in self.stations:
                for _ in range(_poisson(self.rng, self.out_rate(station.kind, self.minute))):
                    self._depart(station)
            while self._arrivals and self._arrivals[0][0] <= self.minute:
                _, _, station_id = heapq.heappop(self._arrivals)
                self.dock(station_id, 1)

    def _depart(self, origin: Station) -> None:
        if origin.bikes == 0:
            self.unmet += 1
            return
        self.take(origin.id, 1)
        self.rides += 1
        toward, share = self.commute(origin.kind, self.minute)
        choices = [s for s in self.in_city(origin.city) if s is not origin] or [origin]
        if self.rng.random() < share:
            choices = [s for s in choices if s.kind == toward] or choices
        to = self.rng.choice(choices)
        self._seq += 1
        heapq.heappush(self._arrivals, (self.minute + 2 + 60 * km(origin, to) / RIDE_KMH, self._seq, to.id))

    def take(self, station_id: int, n: int) -> int:
        """Up to ``n`` bikes off the station; how many there were."""
        station = self.station(station_id)
        taken = min(n, station.bikes)
        station.bikes -= taken
        if station.bikes == 0:
            self.ran_empty.add(station_id)
        return taken

    def dock(self, station_id: int, n: int) -> None:
        """``n`` bikes into the station, the overflow into the nearest stations of its city with room."""
        station = self.station(station_id)
        while n > 0:
            room = station.capacity - station.bikes
            put = min(room, n)
            station.bikes += put
            n -= put
            if n:
                others = [s for s in self.in_city(station.city) if s.bikes < s.capacity]
                if not others:  # the whole city is full: the bikes wait on the pavement of this one
                    station.bikes += n
                    return
                here = station
                station = min(others, key=lambda s: km(here, s))

    def forecast(self, minutes: int) -> dict[int, float]:
        """Bikes the demand model expects at each station in ``minutes``: now, plus rides in, less rides out
        (rides take no time here: the ML engine's model is a simple one)."""
        expected = {s.id: float(s.bikes) for s in self.stations}
        for city in range(len(CITIES)):
            stations = self.in_city(city)
            count: dict[Kind, int] = {"residential": 0, "downtown": 0}
            for station in stations:
                count[station.kind] += 1
            change: dict[Kind, float] = {"residential": 0.0, "downtown": 0.0}
            for m in range(self.minute + 1, self.minute + minutes + 1):
                inflow: dict[Kind, float] = {"residential": 0.0, "downtown": 0.0}
                for kind in KINDS:
                    leaving = count[kind] * self.out_rate(kind, m)
                    toward, share = self.commute(kind, m)
                    for to in inflow:
                        inflow[to] += leaving * (1 - share) / max(1, len(stations))
                    inflow[toward] += leaving * share / max(1, count[toward])
                for kind in change:
                    change[kind] += inflow[kind] - self.out_rate(kind, m)
            for station in stations:
                expected[station.id] += change[station.kind]
        return expected

    @property
    def total_bikes(self) -> int:
        return sum(s.bikes for s in self.stations) + len(self._arrivals)


def gbfs_files(world: World, timezone: str = "America/Los_Angeles") -> dict[str, bytes]:
    """The world's stations as a GBFS v2.3 feed (``station_information``, ``station_status``,
    ``system_information``), by file name; their ``station_id`` is the id, so an import keeps the ids."""
    now = int(datetime.now(UTC).timestamp())
    numbers: dict[tuple[int, Kind], int] = {}
    info, status = [], []
    for s in world.stations:
        city = CITIES[s.city][0]
        n = numbers[s.city, s.kind] = numbers.get((s.city, s.kind), 0) + 1
        info.append(
            {
                "station_id": str(s.id),
                "short_name": f"{SHORT[city]}-{s.kind[0].upper()}{n:02d}",
                "name": f"{city} {s.kind} {n}",
                "lat": round(s.lat, 6),
                "lon": round(s.lon, 6),
                "capacity": s.capacity,
            }
        )
        status.append(
            {
                "station_id": str(s.id),
                "num_bikes_available": s.bikes,
                "num_docks_available": max(0, s.capacity - s.bikes),
                "is_installed": True,
                "is_renting": True,
                "is_returning": True,
                "last_reported": now,
            }
        )
    system = {
        "system_id": "baywheels-simulated",
        "language": "en",
        "name": "A simulated Bay Area",
        "timezone": timezone,
    }

    def file(data: object) -> bytes:
        return msgspec.json.encode({"last_updated": now, "ttl": 60, "version": "2.3", "data": data})

    return {
        "station_information.json": file({"stations": info}),
        "station_status.json": file({"stations": status}),
        "system_information.json": file(system),
    }


def write_gbfs(world: World, folder: Path) -> None:
    """``gbfs_files`` into ``folder`` (made if need be), for ``baywheels stations import FOLDER``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in gbfs_files(world).items():
        (folder / name).write_bytes(body)


def _poisson(rng: random.Random, rate: float) -> int:
    """Knuth's method: fine for the small rates here."""
    limit, k, p = math.exp(-rate), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k
