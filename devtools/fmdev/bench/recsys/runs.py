"""One run of one model under the protocol: our FM (fmrec), or a RecTools model (SASRec, BERT4Rec,
HSTU) fed the same sequences and scored by the same evaluator."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch

from fmdev.bench.recsys.protocol import KS, Clock, Protocol, Selector, run_record
from fmrec.data.split import LeaveOneOut
from fmrec.eval.evaluate import target_ranks
from fmrec.eval.metrics import ndcg_at
from fmrec.train.pretrain import build_model, pretrain
from fmrec.train.recipe import Recipe

Log = Callable[[str], None]


def run_one(split: LeaveOneOut, kind: str, config: dict[str, Any], seed: int, protocol: Protocol, log: Log) -> dict[str, Any]:
    if kind == "fm":
        return run_fm(split, config, seed, protocol, log)
    return run_rectools(split, kind, config, seed, protocol, log)


# ---------------------------------------------------------------- our FM

def run_fm(split: LeaveOneOut, config: dict[str, Any], seed: int, protocol: Protocol, log: Log) -> dict[str, Any]:
    """fmrec's pre-training of the recipe `config` (Recipe.to_config()), checked on validation every
    protocol.every epochs."""
    recipe = Recipe.from_config(config)
    torch.manual_seed(seed)
    model = build_model(split.log, **recipe.arch())
    settings = recipe.settings(seed=seed, device="cpu")
    settings.epochs = min(recipe.epochs, protocol.max_epochs)
    sel = Selector(protocol)
    clock = Clock()
    test = np.zeros(0, dtype=np.int64)
    clock.start()

    def on_epoch(epoch: int, rec: dict[str, float]) -> bool:
        nonlocal test
        clock.stop()
        stop = False
        if epoch % protocol.every == 0 or epoch == settings.epochs:
            val = float(ndcg_at(target_ranks(model, split, "val", split.val_users)).mean())
            best, stop = sel.check(epoch, val)
            if best:
                test = target_ranks(model, split, "test", split.test_users)
                clock.mark_best()
            log(f"  fm epoch {epoch}: val NDCG@10 {val:.4f}{' *' if best else ''}")
        clock.start()
        return stop

    pretrain(model, split, settings, stage="val", on_epoch=on_epoch, log=lambda m: None)
    return run_record("fm", config, seed, sel, clock, test, n_params=model.num_params())


# ---------------------------------------------------------------- RecTools

def rectools_frame(split: LeaveOneOut, stage: str = "test") -> pd.DataFrame:
    """Training interactions for RecTools, ordered exactly as ours.

    Ties on timestamp are broken with microseconds in our (user, timestamp, item) order, so
    RecTools sees the same sequences (and HSTU's relative-time attention the real times)."""
    log = split.log
    keep = split.train_mask(stage)
    frame = pd.DataFrame({"user_id": log.user[keep], "item_id": log.item[keep], "ts": log.timestamp[keep]})
    tie = frame.groupby(["user_id", "ts"]).cumcount().to_numpy()
    frame["datetime"] = pd.to_datetime(frame["ts"], unit="s") + pd.to_timedelta(tie, unit="us")
    frame["weight"] = 1.0
    return frame.drop(columns="ts")


def rectools_dataset(split: LeaveOneOut, stage: str) -> Any:
    from rectools import Columns
    from rectools.dataset import Dataset

    frame = rectools_frame(split, stage).rename(columns={"user_id": Columns.User, "item_id": Columns.Item,
                                                         "datetime": Columns.Datetime, "weight": Columns.Weight})
    return Dataset.construct(frame)


def rectools_ranks(model: Any, dataset: Any, split: LeaveOneOut, stage: str, users: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """0-based rank of each user's `stage` target in the model's top-50 (50 = not in it), seen items
    filtered by RecTools from `dataset` (the history before the target)."""
    from rectools import Columns
    k = max(KS)
    targets = split.log.item[[split.target(int(u), stage) for u in users]]
    context = None
    if model.require_recommend_context:  # HSTU attends over relative time: it is told when the request happens
        when = split.log.timestamp[[split.target(int(u), stage) for u in users]]
        context = pd.DataFrame({Columns.User: users, Columns.Datetime: pd.to_datetime(when, unit="s") + pd.Timedelta(seconds=1),
                                Columns.Weight: 1.0})
    reco = model.recommend(users=users, dataset=dataset, k=k, filter_viewed=True, context=context, on_unsupported_targets="ignore")
    target = pd.Series(targets, index=users)
    hit = reco[reco[Columns.Item].to_numpy() == target.reindex(reco[Columns.User]).to_numpy()]
    rank = pd.Series(k, index=users, dtype=np.int64)
    rank.loc[hit[Columns.User].to_numpy()] = hit[Columns.Rank].to_numpy() - 1
    out: npt.NDArray[np.int64] = rank.to_numpy()
    return out


def run_rectools(split: LeaveOneOut, kind: str, config: dict[str, Any], seed: int, protocol: Protocol, log: Log) -> dict[str, Any]:
    from pytorch_lightning import seed_everything
    from rectools.models import BERT4RecModel, HSTUModel, SASRecModel

    seed_everything(seed, workers=True, verbose=False)
    cfg = dict(config)
    kwargs: dict[str, Any] = {}
    if "logits_t" in cfg:
        kwargs["lightning_module_kwargs"] = {"logits_t": cfg.pop("logits_t")}
    cls = {"sasrec": SASRecModel, "bert4rec": BERT4RecModel, "hstu": HSTUModel}[kind]
    model = cls(loss="softmax", epochs=protocol.every, deterministic=True, verbose=0, **cfg, **kwargs)
    train_ds, test_ds = rectools_dataset(split, "val"), rectools_dataset(split, "test")
    sel = Selector(protocol)
    clock = Clock()
    test = np.zeros(0, dtype=np.int64)
    epoch = 0
    while True:
        clock.start()
        model.fit_partial(train_ds, min_epochs=protocol.every, max_epochs=protocol.every)
        clock.stop()
        epoch += protocol.every
        val = float(ndcg_at(rectools_ranks(model, train_ds, split, "val", split.val_users)).mean())
        best, stop = sel.check(epoch, val)
        if best:
            test = rectools_ranks(model, test_ds, split, "test", split.test_users)
            clock.mark_best()
        log(f"  {kind} epoch {epoch}: val NDCG@10 {val:.4f}{' *' if best else ''}")
        if stop:
            break
    n_params = sum(p.numel() for p in model.torch_model.parameters())
    return run_record(kind, config, seed, sel, clock, test, n_params=n_params)
