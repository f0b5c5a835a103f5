"""MovieLens 100K, read from the copy an installed PyPI wheel ships.

The data's licence forbids redistribution, so this repository never holds a copy: the files are
found inside site-packages at run time. `recbole` ships `dataset_example/ml-100k/` (.inter, .item,
.user); install it without its dependencies (`pip install --no-deps recbole`) — it is only read,
never imported.
"""

from __future__ import annotations

import csv
import importlib.metadata
from pathlib import Path

import numpy as np

from fmrec.data.schema import EventLog, ItemMeta, UserAttrs, encode

AGE_BANDS = ((0, 17, "<18"), (18, 24, "18-24"), (25, 34, "25-34"), (35, 44, "35-44"), (45, 49, "45-49"), (50, 55, "50-55"), (56, 200, "56+"))
RATINGS = ("1", "2", "3", "4", "5")  # action code c is the rating c: what a client sends as the action
YEAR_BUCKETS = (1930, 1950, 1960, 1970, 1980, 1985, 1990, 1993, 1995, 1996, 1997, 1998)


class DataNotFound(FileNotFoundError):
    pass


def locate_ml100k() -> Path:
    """The ml-100k folder inside the installed recbole distribution."""
    try:
        dist = importlib.metadata.distribution("recbole")
    except importlib.metadata.PackageNotFoundError as err:
        raise DataNotFound("MovieLens 100K is read from the recbole wheel: run `pip install --no-deps recbole` (make setup does)") from err
    folder = Path(str(dist.locate_file("recbole/dataset_example/ml-100k")))
    if not (folder / "ml-100k.inter").exists():
        raise DataNotFound(f"{folder}/ml-100k.inter is missing from the installed recbole {dist.version}; reinstall it")
    return folder


def _rows(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)  # header: name:type columns
        return [row for row in reader if row]


def region_from_zip(zipcode: str) -> str:
    """US ZIP codes start with the national area digit (0 = New England ... 9 = West Coast)."""
    return f"us-{zipcode[0]}" if zipcode[:5].isdigit() else "intl"


def age_band(age: int) -> str:
    return next(name for lo, hi, name in AGE_BANDS if lo <= age <= hi)


def load_ml100k(folder: Path | None = None) -> EventLog:
    folder = folder or locate_ml100k()
    inter = _rows(folder / "ml-100k.inter")
    users_raw = np.array([r[0] for r in inter])
    items_raw = np.array([r[1] for r in inter])
    user, user_ids = encode(users_raw)
    item, item_ids = encode(items_raw)
    rating = np.array([int(float(r[2])) for r in inter], dtype=np.int64)
    ts = np.array([int(float(r[3])) for r in inter], dtype=np.int64)

    # Item metadata (genres, release year), aligned to item codes.
    item_index = {raw: code for code, raw in enumerate(item_ids, start=1)}
    meta = _rows(folder / "ml-100k.item")
    genre_names = tuple(sorted({g for r in meta for g in (r[3].split() if len(r) > 3 else [])}))
    genres = np.zeros((len(item_ids) + 1, len(genre_names)), dtype=bool)
    year = np.zeros(len(item_ids) + 1, dtype=np.int64)
    titles = [""] * (len(item_ids) + 1)
    gpos = {g: i for i, g in enumerate(genre_names)}
    for r in meta:
        code = item_index.get(r[0])
        if code is None:
            continue
        titles[code] = r[1]
        for g in r[3].split() if len(r) > 3 else []:
            genres[code, gpos[g]] = True
        if len(r) > 2 and r[2].isdigit():
            year[code] = 1 + int(np.searchsorted(YEAR_BUCKETS, int(r[2]), side="right"))

    # User attributes, aligned to user codes.
    user_index = {raw: code for code, raw in enumerate(user_ids, start=1)}
    raw_attrs: dict[str, list[str]] = {"ageBand": [], "gender": [], "occupation": [], "region": []}
    codes_of: list[int] = []
    for r in _rows(folder / "ml-100k.user"):
        code = user_index.get(r[0])
        if code is None:
            continue
        codes_of.append(code)
        raw_attrs["ageBand"].append(age_band(int(r[1])))
        raw_attrs["gender"].append(r[2])
        raw_attrs["occupation"].append(r[3])
        raw_attrs["region"].append(region_from_zip(r[4]))
    columns, vocab = {}, {}
    for name, values in raw_attrs.items():
        codes, voc = encode(values)
        col = np.zeros(len(user_ids) + 1, dtype=np.int64)
        col[np.array(codes_of)] = codes
        columns[name], vocab[name] = col, voc

    return EventLog(
        user=user, item=item, timestamp=ts, action=rating, user_ids=user_ids, item_ids=item_ids, n_actions=5,
        action_ids=RATINGS, items=ItemMeta(genres=genres, genre_names=genre_names, year_bucket=year, titles=tuple(titles)),
        users=UserAttrs(columns=columns, vocab=vocab), source="movielens100k",
    ).sorted()
