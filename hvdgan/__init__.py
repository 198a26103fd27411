"""hvdgan: train GANs on HPC clusters with Horovod, sharded HDF5 data and in-node model parallelism."""

__version__ = "0.1.0"
