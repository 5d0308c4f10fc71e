"""Synthetic archive: a physically motivated 3D cloud world observed by AHI and CloudSat.

`fields` (smooth, advecting random fields), `world` (atmosphere + cloud layers at any point/time),
`radiance` (AHI forward model), `orbit` (CloudSat ground track, solar/satellite geometry),
`archive` (writes real-format files: P-Tree NetCDF scenes and HDF-EOS2 granules).
"""
