"""Operations epochs of the instruments, one table per platform (EARTHCARE.md §6, with its sources).

A date outside every window of the platform a file names is not data the builder should trust: it is a
recorded skip with the reason.
"""
from __future__ import annotations

import datetime as dt

# Himawari (AHI at 140.7 E), EARTHCARE.md §6.1: [start, end) in UTC; end None = still operational.
# H-9 became primary on 2022-12-13 05:00; after H-9's failure of 2025-10-12 JMA switched back to H-8
# (VIS from 2025-10-11 23:20, IR from 2025-10-12 13:00); the two windows overlap for those hours.
HIMAWARI_WINDOWS = {
    "08": ((dt.datetime(2015, 7, 7), dt.datetime(2022, 12, 13, 5, 0)),
           (dt.datetime(2025, 10, 11, 23, 20), None)),
    "09": ((dt.datetime(2022, 12, 13, 5, 0), dt.datetime(2025, 10, 12, 13, 0)),),
}


def himawari_operational(platform: str, t: dt.datetime) -> bool:
    """Whether Himawari-`platform` ("08"/"09") was JMA's operational imager at `t` (UTC)."""
    return any(a <= t and (b is None or t < b) for a, b in HIMAWARI_WINDOWS.get(platform, ()))


def himawari_for(t: dt.datetime) -> str:
    """The operational platform at `t` ("08" or "09"); the earliest one where windows overlap."""
    for p in sorted(HIMAWARI_WINDOWS):
        if himawari_operational(p, t):
            return p
    return "08"   # before 2015-07-07: no Himawari-8 yet; the synthetic archive still names it


def himawari_window_text(platform: str) -> str:
    return ", ".join(f"{a:%Y-%m-%d %H:%M} to {b:%Y-%m-%d %H:%M}" if b else f"from {a:%Y-%m-%d %H:%M}"
                     for a, b in HIMAWARI_WINDOWS.get(platform, ()))


# Radar+lidar phase labels (EARTHCARE.md §6.2-6.4): [start, end) UTC of the windows in which each product holds
# them, and whether only the sunlit half orbit is observed. 2B-CLDCLASS-LIDAR needs CloudSat and CALIPSO in
# formation: the A-Train from Epoch 06 (CloudSat daylight-only since 2011-11) until the 2018-01-12 anomaly,
# and the C-Train (Epoch 08) from 2018-10-10 until the 2020-08-26 anomaly. EarthCARE's AC__TC__2B: public L2
# from about 2025-03 (the first AC__TC__2B release date is not verified), day and night.
LABEL_WINDOWS = {
    "2B-CLDCLASS-LIDAR": ((dt.datetime(2012, 5, 15, 0, 49), dt.datetime(2018, 1, 12)),
                          (dt.datetime(2018, 10, 10), dt.datetime(2020, 8, 26, 19, 25, 23))),
    "AC__TC__2B": ((dt.datetime(2025, 3, 17), None),),
}
DAYLIGHT_ONLY = {"2B-CLDCLASS-LIDAR": True, "AC__TC__2B": False}


def label_operational(product: str, t: dt.datetime) -> bool:
    """Whether `product` holds radar+lidar phase labels at `t` (UTC)."""
    return any(a <= t and (b is None or t < b) for a, b in LABEL_WINDOWS.get(product, ()))


def label_window_text(product: str) -> str:
    return ", ".join(f"{a:%Y-%m-%d} to {b:%Y-%m-%d}" if b else f"from {a:%Y-%m-%d}"
                     for a, b in LABEL_WINDOWS.get(product, ()))
