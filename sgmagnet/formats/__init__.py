"""Readers and writers for the real input formats (FORMATS.md).

- `ahi`: JAXA P-Tree Himawari AHI L1 gridded NetCDF (`NC_H08_YYYYMMDD_hhmm_R21_FLDK.xxxxx_yyyyy.nc`).
- `hsd`, `hsd_slot`: Himawari Standard Data segments (`HS_H08_YYYYMMDD_hhmm_Bbb_FLDK_Rjj_Skkll.DAT.bz2`), read
  through satpy; `imager`: the questions the collocation asks of either; `epochs`: platform operations windows.
- `cloudsat`: CloudSat 2B-CLDCLASS-LIDAR (HDF-EOS2 swath in HDF4), read with pyhdf, written through the
  HDF-EOS library (`hdfeos`).
Readers decode everything from each file's own attributes (scale/offset/fill/valid range/missing op).
"""


class FormatError(Exception):
    """A file that cannot be read as its format; the message names the file and the problem."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def match_name(path, pattern, expected: str):
    """The regular-expression match of a file's base name, or FormatError "file name is not <expected>"."""
    import os

    m = pattern.match(os.path.basename(str(path)))
    if not m:
        raise FormatError(path, f"file name is not {expected}")
    return m


def name_time(path, text: str, fmt: str, what: str = "date/time"):
    """A time parsed from a file name, or FormatError "bad <what> in file name (...)"."""
    import datetime as dt

    try:
        return dt.datetime.strptime(text, fmt)
    except ValueError as e:
        raise FormatError(path, f"bad {what} in file name ({e})") from e
