"""Published-quality baselines (RecTools SASRec and HSTU) on the same split and evaluator."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from fmrec.data.split import LeaveOneOut
from fmrec.train import ranking_metrics


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


def run_rectools(split: LeaveOneOut, kind: str = "sasrec", epochs: int = 50, n_factors: int = 64, n_blocks: int = 2,
                 session_max_len: int = 50, seed: int = 42, ks: tuple[int, ...] = (10, 20, 50), **kwargs: Any) -> dict[str, float]:
    from pytorch_lightning import seed_everything
    from rectools import Columns
    from rectools.dataset import Dataset
    from rectools.models import HSTUModel, SASRecModel

    seed_everything(seed, workers=True, verbose=False)
    frame = rectools_frame(split).rename(columns={"user_id": Columns.User, "item_id": Columns.Item,
                                                  "datetime": Columns.Datetime, "weight": Columns.Weight})
    dataset = Dataset.construct(frame)
    cls = {"sasrec": SASRecModel, "hstu": HSTUModel}[kind]
    model = cls(n_blocks=n_blocks, n_factors=n_factors, session_max_len=session_max_len, loss="softmax", epochs=epochs,
                deterministic=True, verbose=0, **kwargs)
    t0 = time.perf_counter()
    model.fit(dataset)
    train_s = time.perf_counter() - t0
    users = split.test_users
    context = None
    if model.require_recommend_context:
        # HSTU attends over relative time: it is told when each request happens (the test event's time).
        when = split.log.timestamp[[split.target(int(u), "test") for u in users]]
        context = pd.DataFrame({Columns.User: users, Columns.Datetime: pd.to_datetime(when, unit="s") + pd.Timedelta(seconds=1),
                                Columns.Weight: 1.0})
    reco = model.recommend(users=users, dataset=dataset, k=max(ks), filter_viewed=True, context=context)
    target = pd.Series(split.log.item[[split.target(int(u), "test") for u in users]], index=users)
    reco = reco[reco[Columns.Item].to_numpy() == target.reindex(reco[Columns.User]).to_numpy()]
    rank = pd.Series(max(ks) + 1, index=users, dtype=np.int64)
    rank.loc[reco[Columns.User].to_numpy()] = reco[Columns.Rank].to_numpy() - 1
    out = ranking_metrics(rank.to_numpy(), ks)
    out["train_s"] = train_s
    return out
