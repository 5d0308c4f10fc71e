"""Readers and writers for the real input formats (FORMATS.md).

- `ahi`: JAXA P-Tree Himawari AHI L1 gridded NetCDF (`NC_H08_YYYYMMDD_hhmm_R21_FLDK.xxxxx_yyyyy.nc`).
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
