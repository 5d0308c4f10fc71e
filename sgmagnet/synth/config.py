"""What a synthetic archive is asked for (`sgmagnet synth` options), shared by the world, the writers and the
orchestration."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SynthConfig:
    out: str
    start: str = "2018-10-10"     # the first day of 2B-CLDCLASS-LIDAR's C-Train window (formats.epochs)
    days: int = 1
    region: tuple = (100.0, 160.0, -60.0, 60.0)    # lon0, lon1, lat0, lat1
    res: float = 0.05
    seed: int = 0
    orbit_mode: str = "doop"
    epoch: str | None = None     # day the fields and the orbit are anchored to (default: start); archives
                                 # written in pieces must share it, or every piece repeats the same weather
    satellite: str | None = None        # "08"/"09"; None: the operational platform of each slot's date
    ahi_format: str = "ptree"           # "ptree", "hsd" (needs track_corridor) or "both"
    track_corridor: int | None = None   # write only pixels within this many px of a profile near in time
                                        # (the build's --patch-size); None: whole scenes
    labels: str = "epochs"              # which label products: "epochs" (each where it held labels, as in
                                        # formats.epochs), "cloudsat", "earthcare" or "both" (whatever the date)
    bad_profile_fraction: float = 0.003
    workers: int = 0                    # processes writing AHI slots (0: one per core); any number writes the
                                        # same files
    stats: dict = field(default_factory=dict)
