"""Training as a package: each decision made in one module.

    trainer.py     Trainer (build once, the fit loop, validation, best, patience) and run_training
    strategy.py    Plain | DDP | DeepSpeed: forward, autocast, backward, step, optimizer state
    components.py  optimizer, LR schedule, loss and its class weights
    state.py       what a checkpoint holds (a list of stateful parts)
    preemption.py  SIGUSR2/SIGTERM -> checkpoint at the step boundary, exit 3
    run_dir.py     the run folder: refuse, lock, clear
    logger.py      log.jsonl, TensorBoard, the run header
    compiled.py    train.compile: the column path's forward + loss through torch.compile / CUDA graphs
    profiling.py   train.profile (--profile START:STEPS): Chrome trace and a summary in the run folder

What the machine decides (device, fused kernels, loader kind, bf16) is resolved once in sgmagnet/runtime.py;
loaders come from sgmagnet/loaders.py.
"""
# Lazy: `sgmagnet.train.compiled` and `.profiling` need only torch (the benchmarks import them on the lent GPU
# machine, which has no PyYAML); the trainer and strategies import the config module.
_WHERE = {"Trainer": "trainer", "run_training": "trainer", "EXIT_PREEMPTED": "preemption", "Preempted": "preemption",
          "deepspeed_config": "strategy"}


def __getattr__(name):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(name)


__all__ = ["Trainer", "run_training", "EXIT_PREEMPTED", "Preempted", "deepspeed_config"]
