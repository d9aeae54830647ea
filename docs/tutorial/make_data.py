"""Writes the tutorial's example data (docs/tutorial.md): a small catalog, its users and
their events, as a team would export them, with the team's own ids (``item_12345``,
``user_42``). Seeded: running it again writes the same bytes, so the files in this folder
are the script's output (tests/test_tutorial.py checks that).

    python docs/tutorial/make_data.py [OUT_DIR]     # default: this folder

Users have one or two favourite categories and mostly pick popular items of those, so a
personalised list beats the popular items and the daily run's gate publishes it.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import random
import sys
from pathlib import Path

SEED = 14
CATEGORIES = ["Books", "Music", "Garden", "Kitchen", "Games", "Outdoor"]
ADJECTIVES = ["Classic", "Compact", "Deluxe", "Everyday", "Handmade", "Modern", "Vintage",
              "Travel", "Family", "Pocket"]
NOUNS = {"Books": "novel", "Music": "album", "Garden": "planter", "Kitchen": "knife",
         "Games": "puzzle", "Outdoor": "tent"}
ITEMS_PER_CATEGORY = 20
USERS = 150
START = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
DAYS = 30


def build(rng: random.Random):
    ids = rng.sample(range(10000, 100000), ITEMS_PER_CATEGORY * len(CATEGORIES))
    items = []
    for n, item in enumerate(ids):
        cat = CATEGORIES[n % len(CATEGORIES)]
        adj = ADJECTIVES[rng.randrange(len(ADJECTIVES))]
        tags = sorted(rng.sample(["gift", "sale", "new", "eco", "bestseller", "small"], 2))
        items.append({"item_id": f"item_{item}", "title": f"{adj} {NOUNS[cat]} {n + 1}",
                      "category": cat, "tags": "|".join(tags),
                      "description": f"{adj} {NOUNS[cat]} from our {cat} range.",
                      "created_at": (START - dt.timedelta(days=60 - n % 30)).strftime(
                          "%Y-%m-%dT%H:%M:%SZ")})
    by_cat = {c: [i for i in items if i["category"] == c] for c in CATEGORIES}
    users, events = [], []
    for u in range(1, USERS + 1):
        favourites = rng.sample(CATEGORIES, rng.choice([1, 1, 2]))
        user_id = f"user_{u}"
        users.append({"user_id": user_id, "country": rng.choice(["DE", "FR", "GB", "US"]),
                      "created_at": (START - dt.timedelta(days=rng.randrange(1, 90))).strftime(
                          "%Y-%m-%d"),
                      "preferences": json.dumps({"categories": favourites})})
        n_events = rng.randint(6, 16)
        for _ in range(n_events):
            pool = by_cat[rng.choice(favourites)] if rng.random() < 0.85 else items
            # Popular within the pool: the first items of a category are picked most.
            item = pool[min(int(rng.expovariate(1 / 5)), len(pool) - 1)]
            kind = rng.choices(["view", "click", "purchase", "rating"], [6, 3, 1, 1])[0]
            when = START + dt.timedelta(seconds=rng.randrange(DAYS * 86400))
            events.append({"user_id": user_id, "item_id": item["item_id"],
                           "event_type": kind, "timestamp": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                           "value": str(rng.randint(3, 5)) if kind == "rating" else ""})
    events.sort(key=lambda e: (e["timestamp"], e["user_id"], e["item_id"]))
    return items, users, events


def write(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def main(out: Path) -> None:
    items, users, events = build(random.Random(SEED))
    out.mkdir(parents=True, exist_ok=True)
    write(out / "items.csv", items)
    write(out / "users.csv", users)
    write(out / "events.csv", events)
    print(f"{len(items)} items, {len(users)} users, {len(events)} events in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
