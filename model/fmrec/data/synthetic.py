"""Synthetic event logs for scale tests and GPU benchmarks.

Power-law item popularity, sessions of related items, tastes that drift slowly, and new items
that keep arriving (so cold-start matters). Deterministic for a given seed.
"""

from __future__ import annotations

import numpy as np

from fmrec.data.schema import EventLog, ItemMeta, UserAttrs


def generate(n_events: int = 1_000_000, n_users: int = 20_000, n_items: int = 50_000, n_genres: int = 20,
             seed: int = 0, zipf: float = 1.1, session_len: float = 8.0, new_item_share: float = 0.2) -> EventLog:
    assert n_events >= n_users, f"n_events ({n_events}) must be at least n_users ({n_users})"
    rng = np.random.default_rng(seed)
    start, span = 1_600_000_000, 365 * 24 * 3600

    # Items: a genre each (plus a second one sometimes), a popularity rank and an arrival time.
    genre = rng.integers(0, n_genres, n_items)
    genres = np.zeros((n_items + 1, n_genres), dtype=bool)
    genres[np.arange(1, n_items + 1), genre] = True
    second = rng.random(n_items) < 0.3
    genres[np.arange(1, n_items + 1)[second], rng.integers(0, n_genres, second.sum())] = True
    popularity = 1.0 / np.arange(1, n_items + 1) ** zipf
    rng.shuffle(popularity)
    arrival = np.where(rng.random(n_items) < new_item_share, start + rng.random(n_items) * span, start).astype(np.int64)

    # Users: a taste (distribution over genres) that drifts towards a second taste over the year.
    taste_a = rng.dirichlet(np.full(n_genres, 0.3), n_users)
    taste_b = rng.dirichlet(np.full(n_genres, 0.3), n_users)
    per_user = 1 + rng.multinomial(n_events - n_users, rng.dirichlet(np.full(n_users, 0.5)))

    users = np.repeat(np.arange(1, n_users + 1), per_user)
    ts = (start + rng.random(n_events) * span).astype(np.int64)
    order = np.lexsort((ts, users))
    users, ts = users[order], ts[order]
    frac = (ts - start) / span
    mix = taste_a[users - 1] * (1 - frac[:, None]) + taste_b[users - 1] * frac[:, None]
    # Sessions: consecutive events of a user share the genre picked at the session's start.
    new_session = rng.random(n_events) < 1.0 / session_len
    new_session[np.flatnonzero(np.diff(users)) + 1] = True  # a user's first event starts a session
    new_session[0] = True
    cum = mix.cumsum(axis=1)
    picked = (rng.random(n_events)[:, None] < cum).argmax(axis=1)
    session_id = np.cumsum(new_session)
    g = picked[np.flatnonzero(new_session)][session_id - 1]

    # Item within genre, by popularity, only among items that have arrived (approximately: by bucket).
    by_genre = [np.flatnonzero(genre == k) for k in range(n_genres)]
    item = np.empty(n_events, dtype=np.int64)
    for k in range(n_genres):
        rows = np.flatnonzero(g == k)
        pool = by_genre[k]
        if len(rows) == 0 or len(pool) == 0:
            item[rows] = rng.integers(0, n_items, len(rows))
            continue
        p = popularity[pool] / popularity[pool].sum()
        choice = pool[rng.choice(len(pool), size=len(rows), p=p)]
        late = arrival[choice] > ts[rows]
        choice[late] = pool[np.argmax(popularity[pool] * (arrival[pool] <= start))]
        item[rows] = choice
    item += 1
    rating = np.clip(np.round(rng.normal(3.6, 1.0, n_events)), 1, 5).astype(np.int64)

    user_ids = tuple(f"u{i}" for i in range(1, n_users + 1))
    item_ids = tuple(f"i{i}" for i in range(1, n_items + 1))
    region = np.concatenate([[0], rng.integers(1, 6, n_users)]).astype(np.int64)
    return EventLog(
        user=users, item=item, timestamp=ts, action=rating, user_ids=user_ids, item_ids=item_ids, n_actions=5,
        action_ids=("1", "2", "3", "4", "5"),
        items=ItemMeta(genres=genres, genre_names=tuple(f"g{k}" for k in range(n_genres)),
                       year_bucket=np.concatenate([[0], 1 + ((arrival - start) * 4 // (span + 1))]).astype(np.int64)),
        users=UserAttrs(columns={"region": region}, vocab={"region": ("r1", "r2", "r3", "r4", "r5")}),
        source="synthetic",
    ).sorted()
