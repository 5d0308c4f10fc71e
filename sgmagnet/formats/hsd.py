"""Himawari-8/9 Standard Data (HSD, FORMATS.md §2): names, the header layout, a writer, and the checks satpy leaves out.

Reading is satpy's `ahi_hsd` reader (calibration, segments, the area definition); `sgmagnet.formats.hsd_slot`
drives it. This module holds what satpy does not do:
- the file name (`HS_H08_YYYYMMDD_hhmm_Bbb_FLDK_Rjj_Skkll.DAT[.bz2]`);
- header block 9 (per-line observation times), which satpy parses but does not expose;
- the checks a build needs before it trusts a file (satpy only warns): the block lengths against
  `total_header_length` and the file size, the data size against lines x columns, the band and the platform
  the header names against the file name, the observation timeline against the name, and calibration
  coefficients that are not zero;
- the writer of the synthetic archive: all 11 header blocks with their real sizes and fields, uint16 counts
  with real-style calibration coefficients, error and outside-scan counts, bz2.
The header layout below is written from FORMATS.md §2.2 (the HSD User's Guide as satpy implements it); the
tests open files written with it through satpy, which this project did not write.
"""
from __future__ import annotations

import bz2
import datetime as dt
import os
import re
from dataclasses import dataclass

import numpy as np

from . import FormatError, match_name, name_time

NAME_RE = re.compile(r"^HS_H(0[89])_(\d{8})_(\d{4})_B(\d{2})_FLDK_R(\d{2})_S(\d{2})(\d{2})\.DAT(\.bz2)?$")
MJD_EPOCH = dt.datetime(1858, 11, 17)
PLATFORM_NAME = {"08": "Himawari-8", "09": "Himawari-9"}

# resolution code -> (columns = lines of the full disk, CFAC = LFAC, COFF = LOFF); 10 segments per disk
RESOLUTIONS = {"05": (22000, 81865099, 11000.5), "10": (11000, 40932549, 5500.5), "20": (5500, 20466275, 2750.5)}
N_SEGMENTS = 10
BAND_RES = {1: "10", 2: "10", 3: "05", 4: "10", **{b: "20" for b in range(5, 17)}}
FACTOR = {"05": 4, "10": 2, "20": 1}         # pixels per 2 km pixel along each axis
ERROR_COUNT, OUTSIDE_COUNT = 65535, 65534
SUB_LON = 140.7
H_KM, REQ_KM, RPOL_KM = 42164.0, 6378.137, 6356.7523

# per band: central wavelength (um), valid bits, and (VIS/NIR) solar irradiance E0 (W m-2 um-1) for the
# radiance -> albedo coefficient pi / E0 (B02: 0.00166 as in the real header of FORMATS.md §2.2), or (IR)
# the brightness temperature the top count reaches. Counts: 11 bits VIS/NIR, 14 bits B07, 12 bits B08-B16.
BANDS = {
    1: (0.47063, 11, 2042.0), 2: (0.51000, 11, 1892.0), 3: (0.63914, 11, 1625.0), 4: (0.85670, 11, 958.0),
    5: (1.61010, 11, 248.0), 6: (2.25680, 11, 78.2),
    7: (3.88530, 14, 400.0), 8: (6.24290, 12, 330.0), 9: (6.94100, 12, 330.0), 10: (7.34670, 12, 330.0),
    11: (8.59260, 12, 340.0), 12: (9.63720, 12, 340.0), 13: (10.4073, 12, 340.0), 14: (11.2395, 12, 340.0),
    15: (12.3806, 12, 340.0), 16: (13.2807, 12, 340.0),
}
ALBEDO_MAX = 1.2                         # the top VIS/NIR count's albedo (brighter pixels saturate)
VIS_ZERO_COUNT = 20                      # VIS/NIR count of zero radiance (B02 offset / gain = -20 in real files)
IR_C = (-0.15, 1.0005, -8.0e-7)          # rad2tb: Tb = c0 + c1 Te + c2 Te^2 (small, like the real ones)
C_LIGHT, H_PLANCK, K_BOLTZ = 2.99792458e8, 6.62606957e-34, 1.3806488e-23


def _blk(*fields):
    return np.dtype([("hblock_number", "u1"), ("blocklength", "<u2"), *fields])


BLOCK1 = _blk(("total_number_of_hblocks", "<u2"), ("byte_order", "u1"), ("satellite", "S16"),
              ("proc_center_name", "S16"), ("observation_area", "S4"), ("other_observation_info", "S2"),
              ("observation_timeline", "<u2"), ("observation_start_time", "<f8"), ("observation_end_time", "<f8"),
              ("file_creation_time", "<f8"), ("total_header_length", "<u4"), ("total_data_length", "<u4"),
              ("quality_flag1", "u1"), ("quality_flag2", "u1"), ("quality_flag3", "u1"), ("quality_flag4", "u1"),
              ("file_format_version", "S32"), ("file_name", "S128"), ("spare", "S40"))
BLOCK2 = _blk(("number_of_bits_per_pixel", "<u2"), ("number_of_columns", "<u2"), ("number_of_lines", "<u2"),
              ("compression_flag_for_data", "u1"), ("spare", "S40"))
BLOCK3 = _blk(("sub_lon", "<f8"), ("CFAC", "<u4"), ("LFAC", "<u4"), ("COFF", "<f4"), ("LOFF", "<f4"),
              ("distance_from_earth_center", "<f8"), ("earth_equatorial_radius", "<f8"),
              ("earth_polar_radius", "<f8"), ("req2_rpol2_req2", "<f8"), ("rpol2_req2", "<f8"),
              ("req2_rpol2", "<f8"), ("coeff_for_sd", "<f8"), ("resampling_types", "<i2"),
              ("resampling_size", "<i2"), ("spare", "S40"))
BLOCK4 = _blk(("navigation_info_time", "<f8"), ("SSP_longitude", "<f8"), ("SSP_latitude", "<f8"),
              ("distance_earth_center_to_satellite", "<f8"), ("nadir_longitude", "<f8"), ("nadir_latitude", "<f8"),
              ("sun_position", "<f8", (3,)), ("moon_position", "<f8", (3,)), ("spare", "S40"))
BLOCK5 = _blk(("band_number", "<u2"), ("central_wave_length", "<f8"), ("valid_number_of_bits_per_pixel", "<u2"),
              ("count_value_error_pixels", "<u2"), ("count_value_outside_scan_pixels", "<u2"),
              ("gain_count2rad_conversion", "<f8"), ("offset_count2rad_conversion", "<f8"))
BLOCK5_IR = np.dtype([("c0_rad2tb_conversion", "<f8"), ("c1_rad2tb_conversion", "<f8"), ("c2_rad2tb_conversion", "<f8"),
                      ("c0_tb2rad_conversion", "<f8"), ("c1_tb2rad_conversion", "<f8"), ("c2_tb2rad_conversion", "<f8"),
                      ("speed_of_light", "<f8"), ("planck_constant", "<f8"), ("boltzmann_constant", "<f8"),
                      ("spare", "S40")])
BLOCK5_VIS = np.dtype([("coeff_rad2albedo_conversion", "<f8"), ("coeff_update_time", "<f8"),
                       ("cali_gain_count2rad_conversion", "<f8"), ("cali_offset_count2rad_conversion", "<f8"),
                       ("spare", "S80")])
BLOCK6 = _blk(*[(n, "<f8") for n in ("gsics_calibration_intercept", "gsics_calibration_slope",
                                     "gsics_calibration_coeff_quadratic_term", "gsics_std_scn_radiance_bias",
                                     "gsics_std_scn_radiance_bias_uncertainty", "gsics_std_scn_radiance",
                                     "gsics_correction_starttime", "gsics_correction_endtime")],
              ("gsics_radiance_validity_upper_lim", "<f4"), ("gsics_radiance_validity_lower_lim", "<f4"),
              ("gsics_filename", "S128"), ("spare", "S56"))
BLOCK7 = _blk(("total_number_of_segments", "u1"), ("segment_sequence_number", "u1"),
              ("first_line_number_of_image_segment", "<u2"), ("spare", "S40"))
BLOCK8 = _blk(("center_column_of_rotation", "<f4"), ("center_line_of_rotation", "<f4"),
              ("amount_of_rotational_correction", "<f8"), ("numof_correction_info_data", "<u2"))
BLOCK8_ITEM = np.dtype([("line_number_after_rotation", "<u2"), ("shift_amount_for_column_direction", "<f4"),
                        ("shift_amount_for_line_direction", "<f4")])
BLOCK9 = _blk(("number_of_observation_times", "<u2"))
BLOCK9_ITEM = np.dtype([("line_number", "<u2"), ("observation_time", "<f8")])
BLOCK10 = np.dtype([("hblock_number", "u1"), ("blocklength", "<u4"), ("number_of_error_info_data", "<u2")])
BLOCK10_ITEM = np.dtype([("line_number", "<u2"), ("numof_error_pixels_per_line", "<u2")])
BLOCK11 = _blk(("spare", "S256"))
SPARE40 = np.dtype([("spare", "S40")])


# ------------------------------------------------------------------------------------------------ names
@dataclass(frozen=True)
class HsdName:
    platform: str            # "08" / "09"
    timeline: dt.datetime    # nominal slot start (UTC)
    band: int
    res: str                 # "05" / "10" / "20"
    segment: int
    total: int
    compressed: bool

    @property
    def slot(self) -> str:
        """The slot's name stem, shared by its 160 files: HS_H08_YYYYMMDD_hhmm."""
        return f"HS_H{self.platform}_{self.timeline:%Y%m%d_%H%M}"


def parse_name(path) -> HsdName:
    m = match_name(path, NAME_RE, "a Himawari Standard Data name (HS_H08_YYYYMMDD_hhmm_Bbb_FLDK_Rjj_Skkll.DAT[.bz2])")
    t = name_time(path, m.group(2) + m.group(3), "%Y%m%d%H%M")
    band, res, seg, tot = int(m.group(4)), m.group(5), int(m.group(6)), int(m.group(7))
    if not 1 <= band <= 16:
        raise FormatError(path, f"band B{band:02d} in the file name is not an AHI band (B01-B16)")
    if BAND_RES[band] != res:
        raise FormatError(path, f"the file name gives B{band:02d} resolution R{res}; AHI's B{band:02d} is R{BAND_RES[band]}")
    if tot != N_SEGMENTS or not 1 <= seg <= tot:
        raise FormatError(path, f"segment S{seg:02d}{tot:02d} in the file name: full-disk HSD has segments "
                                f"01..{N_SEGMENTS} of {N_SEGMENTS}")
    return HsdName(m.group(1), t, band, res, seg, tot, bool(m.group(8)))


def hsd_filename(platform: str, timeline: dt.datetime, band: int, segment: int, bz2_: bool = True) -> str:
    return (f"HS_H{platform}_{timeline:%Y%m%d_%H%M}_B{band:02d}_FLDK_R{BAND_RES[band]}_S{segment:02d}{N_SEGMENTS:02d}"
            f".DAT{'.bz2' if bz2_ else ''}")


def is_hsd_name(path) -> bool:
    return bool(NAME_RE.match(os.path.basename(str(path))))


def mjd(t) -> float:
    """datetime / datetime64 -> Modified Julian Date (days since 1858-11-17, the header's time unit)."""
    t = np.datetime64(t, "ns")
    return float((t - np.datetime64(MJD_EPOCH, "ns")).astype(np.int64)) / 86400e9


def from_mjd(days) -> np.ndarray:
    return np.datetime64(MJD_EPOCH, "ns") + np.round(np.asarray(days, np.float64) * 86400e9).astype("timedelta64[ns]")


# ------------------------------------------------------------------------------------------ geometry
def line_col_to_lonlat(line, col, res: str = "20"):
    """CGMS normalized geostationary projection, inverse: 1-based full-disk line/column numbers (pixel
    centres) of resolution `res` -> (lon, lat) in degrees; NaN off the Earth disk. The synthetic writer's
    own implementation of the navigation (the reader uses satpy's area definition instead)."""
    n, cfac, coff = RESOLUTIONS[res]
    x = np.deg2rad((np.asarray(col, np.float64) - coff) * 2.0 ** 16 / cfac)
    y = np.deg2rad((np.asarray(line, np.float64) - coff) * 2.0 ** 16 / cfac)
    r2 = (REQ_KM / RPOL_KM) ** 2
    cx, cy, sx, sy = np.cos(x), np.cos(y), np.sin(x), np.sin(y)
    disc = (H_KM * cx * cy) ** 2 - (cy ** 2 + r2 * sy ** 2) * (H_KM ** 2 - REQ_KM ** 2)
    with np.errstate(invalid="ignore"):
        sd = np.sqrt(disc)
        sn = (H_KM * cx * cy - sd) / (cy ** 2 + r2 * sy ** 2)
    s1, s2, s3 = H_KM - sn * cx * cy, sn * sx * cy, -sn * sy
    lon = np.rad2deg(np.arctan2(s2, s1)) + SUB_LON
    lat = np.rad2deg(np.arctan(r2 * s3 / np.hypot(s1, s2)))
    off = ~(disc >= 0)
    return np.where(off, np.nan, (lon + 180.0) % 360.0 - 180.0), np.where(off, np.nan, lat)


def lonlat_to_line_col(lon, lat, res: str = "20"):
    """CGMS forward: (lon, lat) degrees -> fractional 1-based full-disk (line, col); NaN where not visible."""
    n, cfac, coff = RESOLUTIONS[res]
    lon, lat = np.deg2rad(np.asarray(lon, np.float64)), np.deg2rad(np.asarray(lat, np.float64))
    e2 = 1.0 - (RPOL_KM / REQ_KM) ** 2
    c_lat = np.arctan((RPOL_KM / REQ_KM) ** 2 * np.tan(lat))
    rl = RPOL_KM / np.sqrt(1.0 - e2 * np.cos(c_lat) ** 2)
    dl = lon - np.deg2rad(SUB_LON)
    r1 = H_KM - rl * np.cos(c_lat) * np.cos(dl)
    r2 = -rl * np.cos(c_lat) * np.sin(dl)
    r3 = rl * np.sin(c_lat)
    rn = np.sqrt(r1 ** 2 + r2 ** 2 + r3 ** 2)
    visible = r1 * H_KM - (r1 ** 2 + r2 ** 2 + (REQ_KM / RPOL_KM) ** 2 * r3 ** 2) > 0     # in front of the limb
    x, y = np.rad2deg(np.arctan(-r2 / r1)), np.rad2deg(np.arcsin(-r3 / rn))
    col = coff + x * cfac / 2.0 ** 16
    line = coff + y * cfac / 2.0 ** 16
    return np.where(visible, line, np.nan), np.where(visible, col, np.nan)


# ------------------------------------------------------------------------------------- calibration
def planck_radiance(t_k, wl_um):
    """Spectral radiance W m-2 sr-1 um-1 at temperature t_k and wavelength wl_um (satpy's constants)."""
    lam = wl_um * 1e-6
    with np.errstate(over="ignore", divide="ignore"):
        return 2 * H_PLANCK * C_LIGHT ** 2 / (lam ** 5 * (np.exp(H_PLANCK * C_LIGHT / (K_BOLTZ * lam * t_k)) - 1)) * 1e-6


def calibration(band: int) -> dict:
    """The synthetic archive's count -> radiance coefficients of `band` (and albedo or Tb conversion)."""
    wl, bits, x = BANDS[band]
    top = 2 ** bits - 1
    if band <= 6:
        coeff = np.pi / x
        gain = ALBEDO_MAX / coeff / (top - VIS_ZERO_COUNT)
        return {"wl": wl, "bits": bits, "gain": gain, "offset": -VIS_ZERO_COUNT * gain, "albedo": coeff}
    gain = float(planck_radiance(x, wl)) / (top - 1)
    return {"wl": wl, "bits": bits, "gain": gain, "offset": -gain, "c": IR_C}


def to_counts(band: int, values: np.ndarray, cal: dict | None = None) -> np.ndarray:
    """Albedo (B01-B06, fraction) or brightness temperature (K, B07-B16) -> uint16 counts (NaN -> error
    count), clipped to the band's valid bits."""
    cal = cal or calibration(band)
    v = np.asarray(values, np.float64)
    if band <= 6:
        rad = v / cal["albedo"]
    else:
        c0, c1, c2 = cal["c"]
        with np.errstate(invalid="ignore"):       # Te from Tb = c0 + c1 Te + c2 Te^2 (the root near Tb)
            te = 2 * (v - c0) / (c1 + np.sqrt(c1 * c1 + 4 * c2 * (v - c0)))
        rad = planck_radiance(te, cal["wl"])
    cnt = np.rint((rad - cal["offset"]) / cal["gain"])
    cnt = np.clip(cnt, 0, 2 ** cal["bits"] - 1)
    return np.where(np.isfinite(cnt), cnt, ERROR_COUNT).astype(np.uint16)


def from_counts(band: int, counts: np.ndarray, cal: dict | None = None) -> np.ndarray:
    """The HSD calibration (FORMATS.md §2.3) of our coefficients: counts -> albedo or Tb (NaN for fill)."""
    cal = cal or calibration(band)
    c = np.asarray(counts)
    rad = c.astype(np.float64) * cal["gain"] + cal["offset"]
    if band <= 6:
        out = np.clip(rad * cal["albedo"], 0, None)
    else:
        lam = cal["wl"] * 1e-6
        with np.errstate(divide="ignore", invalid="ignore"):
            te = (H_PLANCK * C_LIGHT / (K_BOLTZ * lam)) / np.log(2 * H_PLANCK * C_LIGHT ** 2 / (rad * 1e6 * lam ** 5) + 1)
        c0, c1, c2 = cal["c"]
        out = np.where(rad > 0, c0 + c1 * te + c2 * te * te, np.nan)
    return np.where((c == ERROR_COUNT) | (c == OUTSIDE_COUNT), np.nan, out)


# ------------------------------------------------------------------------------------------- writer
def _rec(dtype, **values) -> bytes:
    a = np.zeros(1, dtype)
    for k, v in values.items():
        a[k] = v
    return a.tobytes()


def header_bytes(platform: str, timeline: dt.datetime, band: int, segment: int, line_times: list,
                 error_lines: list, start: dt.datetime, end: dt.datetime, created: dt.datetime,
                 cal: dict | None = None) -> bytes:
    """All 11 header blocks of one segment file. line_times: [(full-disk line number, datetime)] for block 9;
    error_lines: [(line number, error pixels in it)] for block 10."""
    res = BAND_RES[band]
    ncols, cfac, coff = RESOLUTIONS[res]
    nlines = ncols // N_SEGMENTS
    cal = cal or calibration(band)
    b8 = _rec(BLOCK8, hblock_number=8, center_column_of_rotation=coff, center_line_of_rotation=coff,
              numof_correction_info_data=2)
    b8_items = np.zeros(2, BLOCK8_ITEM)
    b8_items["line_number_after_rotation"] = [(segment - 1) * nlines + 1, segment * nlines]
    b8 = b8[:BLOCK8.itemsize] + b8_items.tobytes() + bytes(40)
    b9_items = np.zeros(len(line_times), BLOCK9_ITEM)
    b9_items["line_number"] = [ln for ln, _ in line_times]
    b9_items["observation_time"] = [mjd(t) for _, t in line_times]
    b9 = _rec(BLOCK9, hblock_number=9, number_of_observation_times=len(line_times)) + b9_items.tobytes() + bytes(40)
    b10_items = np.zeros(len(error_lines), BLOCK10_ITEM)
    b10_items["line_number"] = [ln for ln, _ in error_lines]
    b10_items["numof_error_pixels_per_line"] = [n for _, n in error_lines]
    b10 = _rec(BLOCK10, hblock_number=10, number_of_error_info_data=len(error_lines)) + b10_items.tobytes() + bytes(40)
    b8 = _patch_length(b8, 2)
    b9 = _patch_length(b9, 2)
    b10 = _patch_length(b10, 4)
    if band <= 6:
        cal5 = _rec(BLOCK5_VIS, coeff_rad2albedo_conversion=cal["albedo"], coeff_update_time=mjd(timeline),
                    cali_gain_count2rad_conversion=cal["gain"], cali_offset_count2rad_conversion=cal["offset"])
    else:
        c0, c1, c2 = cal["c"]
        cal5 = _rec(BLOCK5_IR, c0_rad2tb_conversion=c0, c1_rad2tb_conversion=c1, c2_rad2tb_conversion=c2,
                    c0_tb2rad_conversion=-c0 / c1, c1_tb2rad_conversion=1.0 / c1, c2_tb2rad_conversion=-c2 / c1 ** 3,
                    speed_of_light=C_LIGHT, planck_constant=H_PLANCK, boltzmann_constant=K_BOLTZ)
    # the nominal (launch) coefficients differ a little from the updated ones VIS/NIR files carry
    nominal_gain = cal["gain"] * (1.003 if band <= 6 else 1.0)
    b5 = _rec(BLOCK5, hblock_number=5, blocklength=BLOCK5.itemsize + len(cal5), band_number=band,
              central_wave_length=cal["wl"], valid_number_of_bits_per_pixel=cal["bits"],
              count_value_error_pixels=ERROR_COUNT, count_value_outside_scan_pixels=OUTSIDE_COUNT,
              gain_count2rad_conversion=nominal_gain, offset_count2rad_conversion=cal["offset"]) + cal5
    name = hsd_filename(platform, timeline, band, segment, bz2_=False)
    blocks = [
        None,
        _rec(BLOCK2, hblock_number=2, blocklength=BLOCK2.itemsize, number_of_bits_per_pixel=16,
             number_of_columns=ncols, number_of_lines=nlines, compression_flag_for_data=0),
        _rec(BLOCK3, hblock_number=3, blocklength=BLOCK3.itemsize, sub_lon=SUB_LON, CFAC=cfac, LFAC=cfac, COFF=coff,
             LOFF=coff, distance_from_earth_center=H_KM, earth_equatorial_radius=REQ_KM, earth_polar_radius=RPOL_KM,
             req2_rpol2_req2=(REQ_KM ** 2 - RPOL_KM ** 2) / REQ_KM ** 2, rpol2_req2=RPOL_KM ** 2 / REQ_KM ** 2,
             req2_rpol2=REQ_KM ** 2 / RPOL_KM ** 2, coeff_for_sd=H_KM ** 2 - REQ_KM ** 2, resampling_types=4,
             resampling_size=4),
        _rec(BLOCK4, hblock_number=4, blocklength=BLOCK4.itemsize, navigation_info_time=mjd(start),
             SSP_longitude=SUB_LON + 0.071, SSP_latitude=0.0005, distance_earth_center_to_satellite=H_KM + 0.3,
             nadir_longitude=SUB_LON + 0.009, nadir_latitude=-0.181, sun_position=(1.4e8, 3.2e7, -1.1e7),
             moon_position=(2.5e5, 2.9e5, 1.1e5)),
        b5,
        _rec(BLOCK6, hblock_number=6, blocklength=BLOCK6.itemsize,
             **{n: -1e10 for n in BLOCK6.names if n.startswith("gsics_") and n != "gsics_filename"}),
        _rec(BLOCK7, hblock_number=7, blocklength=BLOCK7.itemsize, total_number_of_segments=N_SEGMENTS,
             segment_sequence_number=segment, first_line_number_of_image_segment=(segment - 1) * nlines + 1),
        b8, b9, b10,
        _rec(BLOCK11, hblock_number=11, blocklength=BLOCK11.itemsize),
    ]
    header_len = BLOCK1.itemsize + sum(len(b) for b in blocks[1:])
    blocks[0] = _rec(BLOCK1, hblock_number=1, blocklength=BLOCK1.itemsize, total_number_of_hblocks=11, byte_order=0,
                     satellite=PLATFORM_NAME[platform].encode(), proc_center_name=b"MSC", observation_area=b"FLDK",
                     observation_timeline=int(f"{timeline:%H%M}"), observation_start_time=mjd(start),
                     observation_end_time=mjd(end), file_creation_time=mjd(created), total_header_length=header_len,
                     total_data_length=nlines * ncols * 2, file_format_version=b"1.3", file_name=name.encode())
    return b"".join(blocks)


def _patch_length(block: bytes, width: int) -> bytes:
    """Write a variable-length block's own length into its blocklength field (u2, or u4 for block 10)."""
    n = len(block)
    return block[:1] + n.to_bytes(width, "little") + block[1 + width:]


def write_segment(path, header: bytes, counts: np.ndarray, fill_stream: bytes | None = None) -> None:
    """Write one segment file: header + counts (uint16 little-endian, lines x columns), bz2-compressed when
    `path` ends with .bz2. fill_stream: a bz2 stream of the data part already compressed (an all-fill
    segment written for many slots compresses once; the file is then two bz2 streams, as pbzip2 writes).
    Written to `<path>.part` and renamed, so a killed writer never leaves a half file under the real name."""
    path = str(path)
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        if not path.endswith(".bz2"):
            f.write(header)
            f.write(np.ascontiguousarray(counts, "<u2").tobytes())
        elif fill_stream is not None:
            f.write(bz2.compress(header, 9))
            f.write(fill_stream)
        else:
            f.write(bz2.compress(header + np.ascontiguousarray(counts, "<u2").tobytes(), 9))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------ checks satpy leaves out
@dataclass
class SegmentHeader:
    """What the builder takes from a segment's header besides satpy's calibration and area."""
    platform: str                # "08"/"09" from block 1's satellite name
    band: int
    nlines: int
    ncols: int
    first_line: int              # full-disk line number of the segment's first line (1-based)
    timeline: str                # hhmm
    line_numbers: np.ndarray     # block 9: full-disk line numbers ...
    line_times: np.ndarray       # ... and their observation times (datetime64[ns])
    projection: bytes = b""      # block 3 as written (the area of every slot with the same bytes is the same)


def check_header(path, data: bytes, name: HsdName, whole: bool = True) -> SegmentHeader:
    """Walk the 11 blocks of a decompressed segment by their own lengths and check them against the file
    (see the module docstring); raise FormatError naming the file and the problem. whole=False: `data` is
    the header only (read_segment_head), so the file's length is not checked against it."""
    def rec(dtype, off):
        if off + dtype.itemsize > len(data):
            raise FormatError(path, f"header block at byte {off} runs past the end of the file ({len(data)} B)")
        return np.frombuffer(data, dtype, 1, off)[0]

    if len(data) < BLOCK1.itemsize:
        raise FormatError(path, f"file is {len(data)} B, shorter than header block 1 ({BLOCK1.itemsize} B)")
    b1 = rec(BLOCK1, 0)
    if int(b1["hblock_number"]) != 1 or int(b1["byte_order"]) != 0:
        raise FormatError(path, "not an HSD segment (block 1 missing or not little-endian)")
    off, blocks = 0, {}
    for k in range(1, 12):
        if off + 3 > len(data):
            raise FormatError(path, f"header ends before block {k} (file is {len(data)} B)")
        num = data[off]
        length = int.from_bytes(data[off + 1: off + (5 if k == 10 else 3)], "little")
        if num != k:
            raise FormatError(path, f"header block {k} expected at byte {off}, found block number {num}")
        if length < 3:
            raise FormatError(path, f"header block {k} says its length is {length} B")
        blocks[k] = off
        off += length
    hdr_len, data_len = int(b1["total_header_length"]), int(b1["total_data_length"])
    if off != hdr_len:
        raise FormatError(path, f"header block lengths add up to {off} B but block 1 says total_header_length "
                                f"= {hdr_len} B")
    b2 = rec(BLOCK2, blocks[2])
    nlines, ncols = int(b2["number_of_lines"]), int(b2["number_of_columns"])
    if nlines * ncols * 2 != data_len:
        raise FormatError(path, f"block 2 gives {nlines} x {ncols} pixels ({nlines * ncols * 2} B) but block 1 says "
                                f"total_data_length = {data_len} B")
    if whole and hdr_len + data_len != len(data):
        raise FormatError(path, f"header ({hdr_len} B) + data ({data_len} B) = {hdr_len + data_len} B but the "
                                f"(decompressed) file holds {len(data)} B")
    want_cols = RESOLUTIONS[name.res][0]
    if ncols != want_cols or nlines * N_SEGMENTS != want_cols:
        raise FormatError(path, f"image is {ncols} columns x {nlines} lines; R{name.res} segments are "
                                f"{want_cols} x {want_cols // N_SEGMENTS}")
    sat = b1["satellite"].split(b"\0")[0].decode("ascii", "replace").strip()
    plat = {v: k for k, v in PLATFORM_NAME.items()}.get(sat)
    if plat is None:
        raise FormatError(path, f"header names the satellite {sat!r}, not Himawari-8 or Himawari-9")
    if plat != name.platform:
        raise FormatError(path, f"file name says H{name.platform} but the header says {sat}")
    tl = f"{int(b1['observation_timeline']):04d}"
    if tl != f"{name.timeline:%H%M}":
        raise FormatError(path, f"header's observation timeline is {tl}, the file name's {name.timeline:%H%M}")
    b5 = rec(BLOCK5, blocks[5])
    band = int(b5["band_number"])
    if band != name.band:
        raise FormatError(path, f"header is band {band}, the file name says B{name.band:02d}")
    gain = float(b5["gain_count2rad_conversion"])
    if band <= 6:
        cal = rec(BLOCK5_VIS, blocks[5] + BLOCK5.itemsize)
        cg, co = float(cal["cali_gain_count2rad_conversion"]), float(cal["cali_offset_count2rad_conversion"])
        if cg != 0 or co != 0:     # satpy's "update" mode uses the updated coefficients when present
            gain = cg
        if float(cal["coeff_rad2albedo_conversion"]) == 0:
            raise FormatError(path, "calibration coefficient rad2albedo is zero (every reflectance would be 0)")
    if not np.isfinite(gain) or gain == 0:
        raise FormatError(path, f"calibration gain (count -> radiance) is {gain} (every pixel would have one "
                                f"radiance)")
    b7 = rec(BLOCK7, blocks[7])
    if int(b7["segment_sequence_number"]) != name.segment:
        raise FormatError(path, f"header is segment {int(b7['segment_sequence_number'])}, the file name says "
                                f"S{name.segment:02d}")
    b9 = rec(BLOCK9, blocks[9])
    n9 = int(b9["number_of_observation_times"])
    if BLOCK9.itemsize + 10 * n9 > (blocks[10] - blocks[9]):
        raise FormatError(path, f"block 9 lists {n9} observation times but is only {blocks[10] - blocks[9]} B long")
    items = np.frombuffer(data, BLOCK9_ITEM, n9, blocks[9] + BLOCK9.itemsize)
    first = int(b7["first_line_number_of_image_segment"])
    lines = items["line_number"].astype(np.int64)
    if n9 and lines.max() <= nlines and first > 1:      # some files count lines within the segment
        lines = lines + first - 1
    ok = np.isfinite(items["observation_time"]) & (items["observation_time"] > 0)
    return SegmentHeader(plat, band, nlines, ncols, first, tl, lines[ok], from_mjd(items["observation_time"][ok]),
                         bytes(data[blocks[3]:blocks[4]]))


def read_segment_head(path) -> bytes:
    """The first bytes of a segment file, through its header (block 1's total_header_length): only the bz2
    blocks that hold them are decompressed (check_header(..., whole=False) reads them)."""
    path = str(path)
    try:
        with (bz2.open(path, "rb") if path.endswith(".bz2") else open(path, "rb")) as f:
            head = f.read(BLOCK1.itemsize)
            if len(head) == BLOCK1.itemsize and head[0] == 1:
                total = int(np.frombuffer(head, BLOCK1, 1)[0]["total_header_length"])
                head += f.read(max(0, min(total, 1 << 24) - len(head)))
            return head
    except (OSError, EOFError, ValueError) as e:
        raise FormatError(path, f"cannot decompress/read ({' '.join(str(e).split()) or type(e).__name__})") from e


def read_segment_bytes(path) -> bytes:
    """The decompressed bytes of a segment file; a truncated or damaged bz2 is a FormatError."""
    path = str(path)
    try:
        if path.endswith(".bz2"):
            with bz2.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, ValueError) as e:
        raise FormatError(path, f"cannot decompress/read ({' '.join(str(e).split()) or type(e).__name__})") from e
