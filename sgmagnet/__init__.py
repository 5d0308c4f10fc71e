"""SGMAGNet: 3D cloud-phase reconstruction from Himawari-8 AHI with CloudSat 2B-CLDCLASS-LIDAR labels."""
__version__ = "0.1.0"
