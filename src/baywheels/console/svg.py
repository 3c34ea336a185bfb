"""Geometry for the SVG the console draws on the server: the overview's hourly chart, and the stations map (an
equirectangular projection of the stations' bounding box, with optional XYZ tiles behind it). Only numbers are
computed here; the templates write the SVG, so every name in it goes through Jinja's escaping."""

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..models import HourCounts
from ..queries import MapArrow, MapStation

WIDTH = 960.0
MARGIN = 24.0
# Most tiles drawn behind the map; the zoom is chosen to stay within it.
_MAX_TILES = 48
# A station's circle, in pixels.
_RADIUS = 6.0


@dataclass(frozen=True, slots=True)
class Point:
    station: MapStation
    x: float
    y: float
    fill: float | None  # bikes / capacity, 0..1; None when unknown


@dataclass(frozen=True, slots=True)
class Arrow:
    arrow: MapArrow
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True, slots=True)
class Tile:
    url: str
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True, slots=True)
class StationMap:
    width: float
    height: float
    points: list[Point]
    arrows: list[Arrow]
    tiles: list[Tile]
    selected: int | None


def fill_ratio(bikes: int | None, capacity: int | None) -> float | None:
    if bikes is None or not capacity:
        return None
    return max(0.0, min(1.0, bikes / capacity))


class _Projection:
    """lon/lat to SVG pixels: x = lon * cos(mid latitude), y = -lat, scaled to WIDTH less the margins."""

    def __init__(self, stations: Sequence[MapStation]) -> None:
        lats = [s.lat for s in stations] or [0.0]
        lons = [s.lon for s in stations] or [0.0]
        pad_lat = max((max(lats) - min(lats)) * 0.04, 0.002)
        pad_lon = max((max(lons) - min(lons)) * 0.04, 0.002)
        self.south, self.north = min(lats) - pad_lat, max(lats) + pad_lat
        self.west, self.east = min(lons) - pad_lon, max(lons) + pad_lon
        self.k = math.cos(math.radians((self.south + self.north) / 2))
        span_x = (self.east - self.west) * self.k
        span_y = self.north - self.south
        self.scale = (WIDTH - 2 * MARGIN) / span_x
        self.height = span_y * self.scale + 2 * MARGIN

    def __call__(self, lon: float, lat: float) -> tuple[float, float]:
        return (
            MARGIN + (lon - self.west) * self.k * self.scale,
            MARGIN + (self.north - lat) * self.scale,
        )


def _tiles(template: str, p: _Projection) -> list[Tile]:
    """The XYZ (Web Mercator) tiles covering the box, each stretched onto its corners' projected positions
    (over a tile's few kilometres the two projections differ by less than a pixel)."""

    def tile_x(lon: float, z: int) -> float:
        return (lon + 180) / 360 * float(2**z)

    def tile_y(lat: float, z: int) -> float:
        rad = math.radians(lat)
        return (1 - math.asinh(math.tan(rad)) / math.pi) / 2 * float(2**z)

    def lon_of(x: float, z: int) -> float:
        return x / float(2**z) * 360 - 180

    def lat_of(y: float, z: int) -> float:
        return math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * y / 2**z))))

    zoom = 18
    while zoom > 0:
        across = math.floor(tile_x(p.east, zoom)) - math.floor(tile_x(p.west, zoom)) + 1
        down = math.floor(tile_y(p.south, zoom)) - math.floor(tile_y(p.north, zoom)) + 1
        if across * down <= _MAX_TILES:
            break
        zoom -= 1
    tiles = []
    for tx in range(math.floor(tile_x(p.west, zoom)), math.floor(tile_x(p.east, zoom)) + 1):
        for ty in range(math.floor(tile_y(p.north, zoom)), math.floor(tile_y(p.south, zoom)) + 1):
            x1, y1 = p(lon_of(tx, zoom), lat_of(ty, zoom))
            x2, y2 = p(lon_of(tx + 1, zoom), lat_of(ty + 1, zoom))
            url = template.replace("{z}", str(zoom)).replace("{x}", str(tx)).replace("{y}", str(ty))
            tiles.append(Tile(url, x1, y1, x2 - x1, y2 - y1))
    return tiles


def station_map(
    stations: Sequence[MapStation], arrows: Sequence[MapArrow], tile_url: str | None, selected: int | None
) -> StationMap:
    project = _Projection(stations)
    where: dict[int, tuple[float, float]] = {}
    points = []
    for station in stations:
        x, y = where[station.id] = project(station.lon, station.lat)
        points.append(Point(station, x, y, fill_ratio(station.num_bikes_available, station.capacity)))
    drawn = []
    for arrow in arrows:
        start, end = where.get(arrow.from_station_id), where.get(arrow.to_station_id)
        if start is None or end is None:
            continue  # a station not (or no longer) in the registry
        length = math.dist(start, end)
        if length < 2 * _RADIUS:
            continue  # stations on top of one another at this scale
        # From the edge of one station's circle to the edge of the other's, where the arrowhead sits.
        dx, dy = (end[0] - start[0]) / length * _RADIUS, (end[1] - start[1]) / length * _RADIUS
        drawn.append(Arrow(arrow, start[0] + dx, start[1] + dy, end[0] - dx, end[1] - dy))
    tiles = _tiles(tile_url, project) if tile_url and stations else []
    return StationMap(WIDTH, project.height, points, drawn, tiles, selected)


# The overview's chart: tasks created, dispatched and completed per hour over the last 24 hours -------------

CHART_WIDTH = 760.0
CHART_HEIGHT = 220.0
_PLOT_LEFT, _PLOT_RIGHT, _PLOT_TOP, _PLOT_BOTTOM = 44.0, 8.0, 12.0, 28.0
SERIES = ("created", "dispatched", "completed")


@dataclass(frozen=True, slots=True)
class Bar:
    series: str
    value: int
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True, slots=True)
class Tick:
    at: float  # x for an hour, y for a count
    label: str


@dataclass(frozen=True, slots=True)
class HourlyChart:
    width: float
    height: float
    left: float
    right: float
    top: float
    bottom: float
    bars: list[Bar]
    hours: list[Tick]
    counts: list[Tick]


def _nice_max(value: int) -> int:
    """The axis's top: 1, 2 or 5 times a power of ten, at or above ``value``."""
    if value <= 0:
        return 1
    power = int(10 ** math.floor(math.log10(value)))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= value)


def hourly_chart(hours: Sequence[HourCounts]) -> HourlyChart:
    plot_width = CHART_WIDTH - _PLOT_LEFT - _PLOT_RIGHT
    plot_height = CHART_HEIGHT - _PLOT_TOP - _PLOT_BOTTOM
    top = _nice_max(max((getattr(h, s) for h in hours for s in SERIES), default=0))
    slot = plot_width / max(len(hours), 1)
    width = slot * 0.8 / len(SERIES)
    bottom = _PLOT_TOP + plot_height
    bars = []
    ticks = []
    for i, hour in enumerate(hours):
        for j, series in enumerate(SERIES):
            value = getattr(hour, series)
            height = plot_height * value / top
            x = _PLOT_LEFT + i * slot + slot * 0.1 + j * width
            bars.append(Bar(series, value, x, bottom - height, width, height))
        if i % 3 == 0 or i == len(hours) - 1:
            ticks.append(Tick(_PLOT_LEFT + (i + 0.5) * slot, hour.hour.strftime("%H:00")))
    # Whole numbers on the count axis: 1, 2 or 5 steps up to 5, then five steps (the top is 1, 2 or 5 x 10^n).
    steps = top if top <= 5 else 5
    counts = [Tick(bottom - plot_height * k / steps, f"{top * k // steps}") for k in range(steps + 1)]
    return HourlyChart(
        CHART_WIDTH,
        CHART_HEIGHT,
        _PLOT_LEFT,
        CHART_WIDTH - _PLOT_RIGHT,
        _PLOT_TOP,
        bottom,
        bars,
        ticks,
        counts,
    )
