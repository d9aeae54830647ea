"""The daily text-embedding step: MiniLM vectors for new and changed items only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import psycopg2

from jobs import text_embeddings as job
from models import text as text_model
from tests.test_hourly import CountingEncoder


def _items(tmp_path, titles: dict[int, str]) -> str:
    frame = pd.DataFrame({"item_id": list(titles), "title": list(titles.values()),
                          "category": ["Drama"] * len(titles),
                          "tags": [["space", "crew"]] * len(titles)})
    path = tmp_path / "items.parquet"
    frame.to_parquet(path)
    return str(path)


def test_only_new_and_changed_items_are_embedded(settings, dsn, tmp_path):
    lake = tmp_path / "lake"
    titles = {1: "Alien (1979)", 2: "Heat (1995)", 3: "Up (2009)"}
    enc = CountingEncoder()
    first = job.run(_items(tmp_path, titles), dsn=dsn, lake_root=lake, encoder=enc)
    assert first["embedded"] == 3 and first["n_items"] == 3

    again = job.run(_items(tmp_path, titles), dsn=dsn, lake_root=lake, encoder=enc)
    assert again["embedded"] == 0 and len(enc.texts) == 3  # nothing changed: no encoding

    titles[2] = "Heat (1995 director's cut)"
    titles[4] = "Solaris (1972)"
    third = job.run(_items(tmp_path, titles), dsn=dsn, lake_root=lake, encoder=enc)
    assert third["embedded"] == 2
    assert [t.split(".")[0] for t in enc.texts[3:]] == ["Heat (1995 director's cut)",
                                                       "Solaris (1972)"]

    store = pd.read_parquet(third["store"]).set_index("item_id")
    assert sorted(store.index) == [1, 2, 3, 4]
    want = text_model.encode([text_model.item_text(titles[2], "Drama", ["space", "crew"])])[0]
    np.testing.assert_allclose(store.loc[2, "vector"], want, atol=1e-5)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT entity_id, model_ver, array_length(vector, 1) FROM embeddings "
                    "WHERE entity_type = 'item' ORDER BY entity_id")
        rows = cur.fetchall()
    assert [r[0] for r in rows] == [1, 2, 3, 4]
    assert {r[1] for r in rows} == {text_model.MODEL_VERSION}
    assert {r[2] for r in rows} == {text_model.DIM}
