"""Run under torchrun (1 or 2 processes): train a tiny model on fixed in-memory global batches and save
the final parameters. Used by test_distributed.py to compare ZeRO 0/1/2 and DDP with a single process.

    torchrun --nproc_per_node N tests/dist_worker.py SHARDS OUT [--deepspeed DS.json] [--accum K]
"""
import argparse
import os

import torch

from sgmagnet import dist as hdist  # noqa: E402
from sgmagnet.config import load_config  # noqa: E402
from sgmagnet.train import Trainer  # noqa: E402

GLOBAL, STEPS, P = 4, 3, 32


def global_batches(n):
    g = torch.Generator().manual_seed(123)
    out = []
    for _ in range(n):
        x = torch.randn(GLOBAL, 16, P, P, generator=g)
        pix = torch.stack([torch.arange(P), torch.randperm(P, generator=g)], 1)
        prof = torch.randint(0, 4, (GLOBAL, P, 38), generator=g, dtype=torch.uint8)
        prof[:, :, 30:] = 255
        geom = 80 * torch.rand(GLOBAL, 2, P, P, generator=g)
        out.append((x, pix, prof, geom))
    return out


def my_batches(rank, world, accum):
    """Split each global batch of GLOBAL samples into world x accum micro-batches; take this rank's."""
    per = GLOBAL // (world * accum)
    for x, pix, prof, geom in global_batches(STEPS):
        for a in range(accum):
            lo = (rank * accum + a) * per
            idx = torch.cat([torch.cat([torch.full((P, 1), b), pix], 1) for b in range(per)])
            yield {"x": x[lo:lo + per], "geom": geom[lo:lo + per], "index": idx,
                   "prof": prof[lo:lo + per].reshape(-1, 38), "lat": torch.zeros(per * P), "soz": torch.zeros(per * P),
                   "keys": [f"s{lo + b}" for b in range(per)]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("shards")
    ap.add_argument("out")
    ap.add_argument("--deepspeed", default="")
    ap.add_argument("--accum", type=int, default=1)
    a = ap.parse_args()
    env = hdist.init_distributed(deepspeed=bool(a.deepspeed))
    per = GLOBAL // (env.world_size * a.accum)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(os.path.join(root, "configs", "tiny.yaml"),
                      [f"data.shards={a.shards}", f"train.run_dir={a.out}/run", f"train.steps={STEPS}",
                       "train.val_every=0", "train.ckpt_every=0", f"data.batch_size={per}",
                       f"optim.accum={a.accum}", "optim.warmup_steps=1", "optim.lr=0.05", "optim.name=sgd", "data.val_split=",
                       f"train.deepspeed={a.deepspeed}", "model.name=unet"])
    tr = Trainer(cfg, env=env, data=iter(my_batches(env.rank, env.world_size, a.accum)), log=lambda m: None)
    tr.fit()
    if env.is_main:
        torch.save(tr.model.state_dict(), os.path.join(a.out, "params.pt"))
    hdist.shutdown()
    hdist.hard_exit(0)


if __name__ == "__main__":
    main()
