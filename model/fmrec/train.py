"""Training and evaluation loops (the same on CPU, one GPU, or several GPUs under torchrun)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from fmrec.data.schema import EventLog, IntArray
from fmrec.data.split import LeaveOneOut
from fmrec.nn.adapters import AdaptedModel, Distilled
from fmrec.nn.fm import FMConfig, FoundationModel, init_weights
from fmrec.tokens import Tokens, tokenize, vocab_sizes, windows


@dataclass
class TrainSettings:
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    seed: int = 42
    stride: int | None = None  # sliding-window stride; default context_len // 2
    precision: str = "auto"  # auto | fp32 | bf16
    grad_clip: float = 1.0
    device: str = "auto"
    ema: float = 0.0  # > 0: keep an exponential moving average of the weights (this decay per step) and use it


class WeightAverage:
    """An exponential moving average of a model's parameters, swapped in for evaluation and kept at the end."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        assert 0 < decay < 1, f"ema decay {decay} must be in (0, 1)"
        self.decay = decay
        self.params = list(model.parameters())
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        for e, p in zip(self.shadow, self.params, strict=True):
            e.lerp_(p.detach(), 1 - self.decay)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the live weights and the average (call twice to undo)."""
        for e, p in zip(self.shadow, self.params, strict=True):
            tmp = p.detach().clone()
            p.copy_(e)
            e.copy_(tmp)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model(log: EventLog, **arch: object) -> FoundationModel:
    vocab = vocab_sizes(log)
    genres = torch.from_numpy(log.items.genres) if log.items is not None else None
    year = torch.from_numpy(log.items.year_bucket) if log.items is not None else None
    cfg = FMConfig(n_items=log.n_items, vocab=vocab,
                   n_genres=genres.shape[1] if genres is not None else 0,
                   n_year_buckets=int(year.max()) if year is not None else 0, **arch)  # type: ignore[arg-type]
    model = FoundationModel(cfg, genres, year)
    init_weights(model)
    return model


def batch_tensors(tok: Tokens, rows: list[IntArray], T: int, H: int, fields: tuple[str, ...],
                  device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Left-padded inputs (B, T') and targets: next H items (B, T', H) and next action (B, T').

    T' is the longest window in the batch (at most T): padding costs compute, and positions
    are counted from the newest event, so trimming changes nothing else."""
    B = len(rows)
    T = min(T, max(len(w) - 1 for w in rows))
    idx = np.full((B, T), -1, dtype=np.int64)
    tgt = np.full((B, T, H), -1, dtype=np.int64)
    for b, w in enumerate(rows):
        n = len(w) - 1  # inputs
        idx[b, T - n:] = w[:-1]
        for j in range(H):
            k = n - j  # positions with a target j+1 steps ahead
            if k > 0:
                tgt[b, T - n:T - n + k, j] = w[1 + j:1 + j + k]
    inputs = {f: torch.from_numpy(np.where(idx >= 0, tok[f][idx], 0)).to(device) for f in fields}
    targets = {
        "item": torch.from_numpy(np.where(tgt >= 0, tok["item"][tgt], 0)).to(device),
        "action": torch.from_numpy(np.where(tgt[..., 0] >= 0, tok["action"][tgt[..., 0]], 0)).to(device),
    }
    return inputs, targets


def length_buckets(wins: list[IntArray], batch_size: int, rng: np.random.Generator, pool: int = 32) -> list[list[IntArray]]:
    """Shuffled batches of windows of similar length (less padding), in random order."""
    order = rng.permutation(len(wins))
    batches: list[list[IntArray]] = []
    for start in range(0, len(order), batch_size * pool):
        chunk = sorted(order[start:start + batch_size * pool], key=lambda i: len(wins[i]))
        batches += [[wins[i] for i in chunk[b:b + batch_size]] for b in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def history_index(split: LeaveOneOut, users: IntArray, stage: str, T: int) -> IntArray:
    """(B, T) log rows of each user's newest T events before the `stage` target, left-padded with -1."""
    idx: IntArray = np.full((len(users), T), -1, dtype=np.int64)
    for b, u in enumerate(users):
        r = split.history(int(u), stage)[-T:]
        if len(r):
            idx[b, T - len(r):] = r
    return idx


def history_tensors(tok: Tokens, split: LeaveOneOut, users: IntArray, stage: str, T: int, fields: tuple[str, ...],
                    device: torch.device) -> dict[str, torch.Tensor]:
    idx = history_index(split, users, stage, T)
    return {f: torch.from_numpy(np.where(idx >= 0, tok[f][idx], 0)).to(device) for f in fields}


class _LossModule(torch.nn.Module):
    """Routes forward() to the multi-task loss, so DistributedDataParallel can wrap it."""

    def __init__(self, model: FoundationModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        return self.model.loss(inputs, targets)


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train(model: FoundationModel, split: LeaveOneOut, s: TrainSettings, stage: str = "test",
          log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
          withheld_items: IntArray | None = None, state_path: Path | None = None,
          on_epoch: Callable[[int, dict[str, float]], bool] | None = None) -> list[dict[str, float]]:
    """Train on every event before the held-out ones of `stage`; returns one record per epoch.

    withheld_items: items whose events are removed from training entirely (cold-start evaluation).
    state_path: after every epoch the full training state (weights, optimiser, schedule, RNGs) is
    written there; if it exists when training starts, training resumes after its last epoch.
    on_epoch(epoch, record): called after every epoch (it may evaluate); returning True stops
    training there (early stopping). The model is put back in training mode after it.
    s.ema > 0: on_epoch sees the averaged weights, and the model ends with them.
    Under torchrun (torch.distributed initialised) every rank trains on its share of each epoch's
    batches and DistributedDataParallel averages the gradients; rank 0 logs and saves."""
    rank, world = _world()
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)  # same on every rank: all ranks agree on the batch order
    device = next(model.parameters()).device
    cfg = model.cfg
    tok = tokenize(split.log)
    H = cfg.horizon if "multiToken" in cfg.objectives else 1
    keep = split.train_mask(stage)
    if withheld_items is not None:
        keep = keep & ~np.isin(split.log.item, withheld_items)
    wins = windows(split.offsets, keep, cfg.context_len, s.stride or max(1, cfg.context_len // 2))
    steps_per_epoch = math.ceil(len(wins) / s.batch_size / world)
    total = steps_per_epoch * s.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / max(1, s.warmup_steps)) * 0.5 * (1 + math.cos(math.pi * min(i, total) / total)))
    use_bf16 = s.precision == "bf16" or (s.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    history: list[dict[str, float]] = []
    first_epoch = 1
    average = WeightAverage(model, s.ema) if s.ema > 0 else None
    if state_path is not None and state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        if average is not None and "ema" in state:
            for e, v in zip(average.shadow, state["ema"], strict=True):
                e.copy_(v)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        history, first_epoch = state["history"], state["epoch"] + 1
        log(f"resuming from {state_path} after epoch {state['epoch']}")
    step: torch.nn.Module = _LossModule(model)
    if world > 1:
        step = torch.nn.parallel.DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None)
    n_events = sum(len(w) - 1 for w in wins)
    log(f"training {model.num_params():,} parameters on {len(wins):,} windows ({n_events:,} targets) for {s.epochs} epochs on "
        f"{world} x {device}{' in bf16' if use_bf16 else ''}")
    model.train()
    for epoch in range(first_epoch, s.epochs + 1):
        t0, sums, seen = time.perf_counter(), {"loss": 0.0}, 0
        batches = length_buckets(wins, s.batch_size, rng)
        batches = batches[: len(batches) // world * world][rank::world]  # equal step counts on every rank
        for rows in batches:
            inputs, targets = batch_tensors(tok, rows, cfg.context_len, H, cfg.event_fields, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss, parts = step(inputs, targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
            opt.step()
            sched.step()
            if average is not None:
                average.update()
            sums["loss"] += float(loss.detach()) * len(rows)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * len(rows)
            seen += len(rows)
        dt = time.perf_counter() - t0
        rec = {"epoch": float(epoch), **{k: v / max(seen, 1) for k, v in sums.items()}, "seconds": dt, "events_per_s": n_events / dt}
        history.append(rec)
        if rank == 0:
            log(f"epoch {epoch:3d}/{s.epochs}  loss {rec['loss']:.4f}  {rec['events_per_s']:,.0f} events/s  {dt:.1f}s")
            if state_path is not None:
                tmp = state_path.with_suffix(".tmp")
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                            "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "history": history,
                            "epoch": epoch, **({"ema": average.shadow} if average is not None else {})}, tmp)
                tmp.replace(state_path)  # atomic: a crash mid-write leaves the previous state
        stop = False
        if on_epoch is not None:
            if average is not None:
                average.swap()  # evaluate the average
            stop = on_epoch(epoch, rec)
            model.train()
            if average is not None:
                average.swap()
        if stop:
            break
    if average is not None:
        average.swap()  # the model keeps the average
    model.eval()
    return history


@torch.no_grad()
def ranked_scores(model: FoundationModel | AdaptedModel, split: LeaveOneOut, users: IntArray, stage: str = "test",
                  batch_size: int = 256, cold: torch.Tensor | None = None,
                  candidates: torch.Tensor | None = None) -> Iterator[tuple[IntArray, torch.Tensor]]:
    """What evaluation ranks, batch by batch: (users (B,), scores (B, N)) where every item in the
    user's whole history before the `stage` target (and every non-candidate) scores -inf.

    Input per user: the newest context_len events before the target, left-padded; each event's
    fields as tokenize() gives them over the whole log (so the oldest event in the window keeps
    its real time gap). The served model must rank exactly like this; its tests compare with it."""
    model.eval()
    device = next(model.parameters()).device
    tok = tokenize(split.log)
    for start in range(0, len(users), batch_size):
        chunk = users[start:start + batch_size]
        inputs = history_tensors(tok, split, chunk, stage, model.cfg.context_len, model.cfg.event_fields, device)
        scores, _ = model.score_next(inputs, cold)  # (B, N)
        yield chunk, mask_seen(scores, [split.log.item[split.history(int(u), stage)] for u in chunk], candidates)


@torch.no_grad()
def evaluate(model: FoundationModel | AdaptedModel, split: LeaveOneOut, stage: str = "test", ks: tuple[int, ...] = (10, 20, 50),
             batch_size: int = 256, users: IntArray | None = None, cold: torch.Tensor | None = None,
             candidates: torch.Tensor | None = None) -> dict[str, float]:
    """Full ranking over all items, items the user already saw filtered; HR@k and NDCG@k."""
    return ranking_metrics(target_ranks(model, split, stage, users, batch_size, cold, candidates), ks)


@torch.no_grad()
def target_ranks(model: FoundationModel | AdaptedModel, split: LeaveOneOut, stage: str = "test", users: IntArray | None = None,
                 batch_size: int = 256, cold: torch.Tensor | None = None, candidates: torch.Tensor | None = None) -> npt.NDArray[np.int64]:
    """What evaluate() scores, per user: the 0-based rank of each user's `stage` target."""
    users = split.test_users if users is None else users
    ranks: list[npt.NDArray[np.int64]] = []
    for chunk, scores in ranked_scores(model, split, users, stage, batch_size, cold, candidates):
        target = torch.tensor([split.log.item[split.target(int(u), stage)] for u in chunk], device=scores.device)
        ranks.append(rank_of(scores, target).cpu().numpy())
    return np.concatenate(ranks)


@torch.no_grad()
def top_score_deciles(model: FoundationModel | AdaptedModel, split: LeaveOneOut, stage: str = "test",
                      users: IntArray | None = None) -> list[float]:
    """The 10%..90% points of each evaluated user's top-1 score (seen items filtered): the served
    model's top-score histogram buckets, so offline each bucket holds a tenth of the users."""
    users = split.test_users if users is None else users
    top = torch.cat([scores.max(1).values for _, scores in ranked_scores(model, split, users, stage)])  # (U,)
    return [float(q) for q in torch.quantile(top, torch.linspace(0.1, 0.9, 9))]


def mask_seen(scores: torch.Tensor, seen: list[IntArray], candidates: torch.Tensor | None = None) -> torch.Tensor:
    """A copy of scores (B, N) with each row's seen items and, when given, every non-candidate at -inf."""
    scores = scores.float().clone()
    for b, items in enumerate(seen):
        scores[b, torch.from_numpy(items).to(scores.device)] = float("-inf")
    if candidates is not None:
        allowed = torch.zeros(scores.shape[1], dtype=torch.bool, device=scores.device)
        allowed[candidates] = True
        scores[:, ~allowed] = float("-inf")
    return scores


def rank_of(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target in its row of scores (B, N); ties count against the target."""
    t = scores.gather(1, target[:, None])  # (B, 1)
    return (scores >= t).sum(1) - 1


def rank_targets(scores: torch.Tensor, target: torch.Tensor, seen: list[IntArray], candidates: torch.Tensor | None = None) -> torch.Tensor:
    """0-based rank of each target among unseen items (ties count against the target)."""
    return rank_of(mask_seen(scores, seen, candidates), target)


def ndcg_at(ranks: npt.NDArray[np.int64], k: int = 10) -> npt.NDArray[np.float64]:
    """Per-user NDCG@k of 0-based ranks (a miss is 0)."""
    out: npt.NDArray[np.float64] = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    return out


def ranking_metrics(ranks: npt.NDArray[np.int64], ks: tuple[int, ...] = (10, 20, 50)) -> dict[str, float]:
    out: dict[str, float] = {"users": float(len(ranks))}
    for k in ks:
        out[f"HR@{k}"] = float((ranks < k).mean())
        out[f"NDCG@{k}"] = float(ndcg_at(ranks, k).mean())
    return out


def slice_users(log: EventLog, attribute: str, values: list[str]) -> IntArray:
    """User codes whose `attribute` (region, ageBand, gender, occupation) is one of `values`."""
    if log.users is None or attribute not in log.users.columns:
        known = sorted(log.users.columns) if log.users is not None else []
        raise ValueError(f"slice attribute {attribute!r} is not in this data (known: {known}); fix spec.task.slice.attribute")
    vocab = log.users.vocab[attribute]
    unknown = [v for v in values if v not in vocab]
    if unknown:
        raise ValueError(f"slice values {unknown} do not occur for {attribute} (known: {list(vocab)}); fix spec.task.slice.values")
    codes = [vocab.index(v) + 1 for v in values]
    users: IntArray = np.flatnonzero(np.isin(log.users.columns[attribute], codes)).astype(np.int64)
    return users


def finetune(model: torch.nn.Module, split: LeaveOneOut, users: IntArray, s: TrainSettings, stage: str = "test",
             log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True), min_action: int = 0,
             temperature: float = 2.0, soft_weight: float = 0.5) -> list[dict[str, float]]:
    """Train only the adapter of an AdaptedModel on the windows of `users` (the FM stays frozen).

    min_action > 0 makes it a different task: predict the next item the user will rate at least
    that high (e.g. 4 = "liked", for notifications); other next events are not targets.

    A distilled adapter (a student) learns from the frozen FM as its teacher as well: its loss is
    (1 - soft_weight) * the hard loss above + soft_weight * temperature^2 * KL(teacher || student)
    of the next-item distributions softened by `temperature`, at every position with a next event
    (the teacher knows something about every one of them, not only the task's targets)."""
    assert isinstance(model, AdaptedModel), "finetune trains an AdaptedModel (a frozen FM plus an adapter)"
    assert temperature > 0 and 0 <= soft_weight <= 1, f"temperature {temperature} must be > 0 and soft_weight {soft_weight} in [0, 1]"
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    device = next(model.adapter.parameters()).device
    cfg = model.cfg
    distill = isinstance(model.adapter, Distilled)
    tok = tokenize(split.log)
    keep = split.train_mask(stage) & np.isin(split.log.user, users)
    wins = windows(split.offsets, keep, cfg.context_len, s.stride or max(1, cfg.context_len // 2))
    opt = torch.optim.AdamW(model.adapter.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    log(f"fine-tuning {model.adapter.num_params():,} {model.adapter.kind} adapter parameters on {len(users)} users "
        f"({len(wins)} windows), FM frozen" + (f", distilled from it at temperature {temperature:g}" if distill else ""))
    history: list[dict[str, float]] = []
    model.train()
    for epoch in range(1, s.epochs + 1):
        total, n = 0.0, 0
        order = rng.permutation(len(wins))
        for start in range(0, len(wins), s.batch_size):
            rows = [wins[i] for i in order[start:start + s.batch_size]]
            inputs, targets = batch_tensors(tok, rows, cfg.context_len, 1, cfg.event_fields, device)
            t = targets["item"][..., 0]
            sel = (t > 0) & (targets["action"] >= min_action)
            if not sel.any():
                continue
            logits = model.logits(inputs)  # (B, T, N)
            loss = torch.nn.functional.cross_entropy(logits[sel], t[sel])
            if distill:
                loss = (1 - soft_weight) * loss + soft_weight * distill_loss(model, inputs, logits, t > 0, temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + float(loss.detach()) * len(rows), n + len(rows)
        history.append({"epoch": float(epoch), "loss": total / max(1, n)})
        log(f"adapter epoch {epoch}/{s.epochs}  loss {history[-1]['loss']:.4f}")
    model.eval()
    return history


def distill_loss(model: AdaptedModel, inputs: dict[str, torch.Tensor], student: torch.Tensor, where: torch.Tensor,
                 temperature: float) -> torch.Tensor:
    """temperature^2 * KL(teacher || student) per position, averaged over `where` (B, T); the teacher is the frozen FM.

    The padding column (always -inf) is left out: 0 * log 0 terms would be NaN."""
    with torch.no_grad():
        teacher = (model.fm(inputs) @ model.fm.item_table().T)[where][:, 1:]  # (M, N-1)
    t_log = torch.log_softmax(teacher / temperature, dim=-1)
    s_log = torch.log_softmax(student[where][:, 1:] / temperature, dim=-1)
    kl = torch.nn.functional.kl_div(s_log, t_log, log_target=True, reduction="batchmean")
    return kl * temperature ** 2


def cold_items(log: EventLog, share: float = 0.1, seed: int = 0) -> IntArray:
    """A seeded random share of the items (with metadata) to withhold from training."""
    rng = np.random.default_rng(seed)
    items = np.arange(1, log.n_items + 1)
    chosen: IntArray = np.sort(rng.choice(items, size=max(1, int(share * log.n_items)), replace=False)).astype(np.int64)
    return chosen


@torch.no_grad()
def evaluate_cold(model: FoundationModel, split: LeaveOneOut, cold: IntArray, ks: tuple[int, ...] = (10, 20)) -> dict[str, dict[str, float]]:
    """Users whose test item was withheld from training: rank it among the withheld items only.

    The FM scores withheld items from metadata alone (their ID embeddings never trained and are
    switched off). Baselines: random order, and genre popularity (training events per genre)."""
    users = np.array([u for u in split.test_users if split.log.item[split.target(int(u), "test")] in set(cold.tolist())])
    cold_t = torch.from_numpy(cold)
    fm = evaluate(model, split, users=users, ks=ks, cold=cold_t, candidates=cold_t)
    rng = np.random.default_rng(0)
    n = len(cold)
    random_ranks = rng.integers(0, n, len(users))
    out = {"fm_content_only": fm, "random": ranking_metrics(random_ranks, ks)}
    items = split.log.items
    if items is not None:
        keep = split.train_mask("test") & ~np.isin(split.log.item, cold)
        genre_counts = items.genres[split.log.item[keep]].sum(axis=0)
        item_score = (items.genres * genre_counts).sum(axis=1) / np.maximum(items.genres.sum(axis=1), 1)
        item_score = item_score / max(item_score.max(), 1) + rng.uniform(0, 1e-6, len(item_score))  # random tie-break
        scores = torch.tensor(item_score, dtype=torch.float64)[None].repeat(len(users), 1)
        scores[:, 0] = float("-inf")
        target = torch.tensor([split.log.item[split.target(int(u), "test")] for u in users])
        seen = [split.log.item[split.history(int(u), "test")] for u in users]
        out["genre_popularity"] = ranking_metrics(rank_targets(scores, target, seen, cold_t).numpy(), ks)
    out["fm_content_only"]["users"] = float(len(users))
    return out
