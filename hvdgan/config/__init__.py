"""Run configuration: what the user asks for, then what the run uses. One module a job.

    options   the options in sections (dataset, network, regularisation, optim, schedule, distribution,
              output, evaluation): each field's type, default, help, choices and check, declared once
    sources   job files, HVDGAN_TRAIN_* variables and options: `load_job_file`, `build` (checked)
    resolve   `resolve(options, world, data)`: the frozen `Resolved` configuration and the GAN's
              `GANSettings`, decided once before training

The names below are the package's public interface.
"""

from .options import OPTIONS, TrainConfig
from .resolve import DataFacts, GANSettings, Resolved, resolve
from .sources import build, load_job_file

__all__ = ["OPTIONS", "DataFacts", "GANSettings", "Resolved", "TrainConfig", "build", "load_job_file", "resolve"]
