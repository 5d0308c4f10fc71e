"""Training as a package: each decision made in one module.

    trainer.py     Trainer (build once, the fit loop, validation, best, patience) and run_training
    strategy.py    Plain | DDP | DeepSpeed: forward, autocast, backward, step, optimizer state
    components.py  optimizer, LR schedule, loss and its class weights
    state.py       what a checkpoint holds (a list of stateful parts)
    preemption.py  SIGUSR2/SIGTERM -> checkpoint at the step boundary, exit 3
    run_dir.py     the run folder: refuse, lock, clear
    logger.py      log.jsonl, TensorBoard, the run header

What the machine decides (device, fused kernels, loader kind, bf16) is resolved once in sgmagnet/runtime.py;
loaders come from sgmagnet/loaders.py.
"""
from .preemption import EXIT_PREEMPTED, Preempted
from .strategy import deepspeed_config
from .trainer import Trainer, run_training

__all__ = ["Trainer", "run_training", "EXIT_PREEMPTED", "Preempted", "deepspeed_config"]
