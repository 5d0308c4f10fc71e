"""Which training loader a run uses, decided here (data.loader: auto | torch | dali).

    torch  data.EpochStream: WebDataset + DataLoader workers (any machine)
    dali   dali.DaliStream: DALI's webdataset reader (GPU machines with nvidia-dali)
    auto   dali on CUDA, torch elsewhere
Both yield the same batch dicts (data.collate) and resume exactly from their state_dict().
"""
from __future__ import annotations

from .data import EpochStream, LoaderConfig, Normaliser


def loader_kind(requested: str, device) -> str:
    """data.loader resolved for this device."""
    if requested == "auto":
        return "dali" if getattr(device, "type", str(device)) == "cuda" else "torch"
    return requested


def train_stream(requested: str, urls, norm: Normaliser, cfg: LoaderConfig, *, seed: int, device,
                 epoch_batches: int):
    """The endless, resumable training batch stream of the loader `requested` resolves to. `epoch_batches`
    fixes the epoch length (needed with resampled shards; DALI uses it only then)."""
    if loader_kind(requested, device) == "dali":
        from .dali import DaliStream

        return DaliStream(urls, norm, cfg, seed=seed, device=device, epoch_batches=epoch_batches if cfg.resample else 0)
    return EpochStream(urls, norm, cfg, seed=seed, epoch_batches=epoch_batches)
