"""Offline resolution of US zip codes to a location, region and geohash, with the `zipcodes` package."""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass

logger = logging.getLogger(__name__)

GEOHASH_ALPHABET = "0123456789bcdefghjkmnpqrstuvwxyz"
GEOHASH_PRECISION = 5
ZIP_PATTERN = re.compile(r"^(\d{5})(?:-\d{4})?$")


@dataclass(frozen=True)
class Place:
    """A resolved zip code: ``location`` as a geo_point dict, ``region`` as ISO 3166-2 (``US-MN``)."""

    location: dict[str, float]
    region: str
    country: str
    geohash: str


def geohash(lat: float, lon: float, precision: int = GEOHASH_PRECISION) -> str:
    """Encode a point as a geohash of ``precision`` characters (5 is a cell of about 4.9 x 4.9 km)."""
    lat_range, lon_range = [-90.0, 90.0], [-180.0, 180.0]
    bits, value, even, code = 0, 0, True, []
    while len(code) < precision:
        span, coordinate = (lon_range, lon) if even else (lat_range, lat)
        middle = (span[0] + span[1]) / 2
        value <<= 1
        if coordinate >= middle:
            value |= 1
            span[0] = middle
        else:
            span[1] = middle
        even = not even
        bits += 1
        if bits == 5:
            code.append(GEOHASH_ALPHABET[value])
            bits, value = 0, 0
    return "".join(code)


@functools.lru_cache(maxsize=100_000)
def resolve_zip(zip_code: str | None) -> Place | None:
    """Return the place of a US zip code (5 digits, optionally ``-NNNN``), or None when unknown.

    Non-US codes, such as the Canadian postal codes in ml-100k, return None.
    """
    match = ZIP_PATTERN.match((zip_code or "").strip())
    if not match:
        return None
    import zipcodes

    try:
        found = zipcodes.matching(match.group(1))
    except (ValueError, TypeError) as error:
        logger.debug("zip code %s not resolved: %s", zip_code, error)
        return None
    if not found:
        return None
    entry = found[0]
    lat, lon = float(entry["lat"]), float(entry["long"])
    country = entry.get("country") or "US"
    return Place(location={"lat": lat, "lon": lon}, region=f"{country}-{entry['state']}", country=country,
                 geohash=geohash(lat, lon))
