-- Experiments (issue 13): when an experiment really stopped, and the analysts' views.
--
-- starts_at / ends_at are the planned window (the reader serves inside it); stopped_at is
-- when `recs experiments stop` ended it, so the daily analysis keeps reporting a stopped
-- experiment for a few days after (clicks on lists served before the stop still arrive).
ALTER TABLE experiments ADD COLUMN stopped_at TIMESTAMPTZ;

-- One row per (experiment, day, variant, metric, method) with the experiment's definition
-- beside it: what was compared, how big the difference is, and how sure.
CREATE VIEW experiment_summary AS
SELECT r.experiment_key, e.kind, e.layer, e.status, e.primary_metric,
       r.day, r.variant, r.metric, r.method, r.users, r.exposures,
       r.mean, r.diff,
       CASE WHEN r.diff IS NOT NULL AND r.mean IS NOT NULL AND r.mean - r.diff <> 0
            THEN r.diff / (r.mean - r.diff) END AS relative_diff,
       r.low, r.high, r.p_value, r.p_adjusted,
       (r.low > 0 OR r.high < 0) AS excludes_zero,
       r.metric = e.primary_metric AS is_primary,
       r.details
FROM experiment_results r
JOIN experiments e USING (experiment_key);

-- The newest decision of each experiment, with its definition.
CREATE VIEW experiment_latest_decisions AS
SELECT DISTINCT ON (d.experiment_key)
       d.experiment_key, e.kind, e.layer, e.status, e.owner, e.primary_metric,
       e.starts_at, e.ends_at, e.stopped_at, d.day, d.action, d.reason, d.srm_p_value,
       (d.details->>'srm_flagged')::boolean AS srm_flagged,
       (d.details->>'multiple_exposure_share')::float AS multiple_exposure_share,
       d.details
FROM experiment_decisions d
JOIN experiments e USING (experiment_key)
ORDER BY d.experiment_key, d.day DESC;

GRANT SELECT ON experiment_summary, experiment_latest_decisions TO recs_analyst;
