-- The daily extract reads only what changed (jobs/extract.py): the closed day, and the
-- days that received late events since the previous run, found by ``ingested_at``. A BRIN
-- index fits: rows are appended in ingestion order, so each partition's newest rows sit
-- in its last blocks and the lookup reads those, not the history. Created on the
-- partitioned table, it exists on every partition, present and future.
CREATE INDEX IF NOT EXISTS interactions_ingested_at_brin
    ON interactions USING brin (ingested_at);
