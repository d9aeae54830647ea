"""HNSW over float32 vectors against HNSW over 8-bit codes: search time and recall.

The funnel's generators search HNSW graphs above ``RECS_EXACT_INDEX_MAX_ITEMS`` and
rescore every hit exactly (models/generators.py), so the graph may hold 8-bit
scalar-quantized codes (``IndexConfig(hnsw_codes="sq8")``) instead of float32 vectors:
a search then reads a quarter of the bytes per visited node. This measures, on one
thread, the time per query and recall@100 against exact search of both, for independent
Gaussian vectors (what no ANN index searches well) and for vectors of low intrinsic
dimension (a 24-dimensional latent through a fixed random matrix plus noise 0.3, as
bench/catalog_scaling.py draws them), at efSearch 128 and 256 (the shipped value).

    .venv/bin/python -m bench.hnsw_codes [--items 100000] [--dim 384] [--queries 300]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.catalog_scaling import embeddings
from bench.common import emit
from models import index as ann


def main() -> None:
    import faiss

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--k", type=int, default=116, help="hits asked (the text pool: 100 + 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the result as JSON here")
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    rows = []
    for shape in ("gaussian", "latent24"):
        projection = None if shape == "gaussian" else \
            (rng.standard_normal((24, args.dim)) / np.sqrt(24)).astype("float32")
        x = embeddings(rng, args.items, projection, args.dim)
        q = embeddings(rng, args.queries, projection, args.dim)
        exact = faiss.IndexFlatIP(args.dim)
        exact.add(x)
        _, truth = exact.search(q, 100)
        for codes in ("flat", "sq8"):
            t0 = time.perf_counter()
            index = ann.build(x, ann.IndexConfig(exact_max=0, hnsw_codes=codes))
            build_s = time.perf_counter() - t0
            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)
            try:
                for ef in (128, 256):
                    index.hnsw.efSearch = ef
                    t0 = time.perf_counter()
                    _, got = index.search(q, args.k)
                    ms = (time.perf_counter() - t0) / len(q) * 1000
                    recall = float(np.mean([len(set(t) & set(g)) / 100
                                            for t, g in zip(truth, got, strict=True)]))
                    row = {"vectors": shape, "codes": codes, "ef_search": ef,
                           "ms_per_query": round(ms, 3), "recall_at_100": round(recall, 4),
                           "build_s": round(build_s, 1)}
                    rows.append(row)
                    print(row, flush=True)
            finally:
                faiss.omp_set_num_threads(threads)
    result = {"args": vars(args), "rows": rows}
    emit(result, args.out)


if __name__ == "__main__":
    main()
