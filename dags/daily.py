"""Daily: the two-stage funnel, from the day's events to published lists.

extract -> prepare -> [Spark ALS, Spark co-visitation, text embeddings -> two-tower,
item stats, FAISS index] -> evaluate (the ranker cross-fitted on the held-out users; every
generator, the ranker and the full pipeline scored; the lists to publish chosen) -> gate
-> precompute (the chosen lists: candidates, ranking, re-ranking, reasons) -> publish
-> variants (the lists of running experiments' precompute variants, their users only).

Wiring only: every step is a function in jobs/daily.py; heavy imports happen inside the
tasks; XCom carries paths and small dicts. Each run covers its data interval (one day),
so backfills and re-runs of a date give that date's outputs.
"""

from __future__ import annotations

import datetime as dt

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import CronDataIntervalTimetable, dag, get_current_context, task

from jobs import daily as steps


def spark_task(task_id: str, application: str, args) -> SparkSubmitOperator:
    """A Spark application of jobs/ submitted through the ``spark_default`` connection."""
    return SparkSubmitOperator(task_id=task_id, application=application,
                               conn_id="spark_default", application_args=args,
                               conf=steps.spark_conf(), name=f"recs-{task_id}",
                               verbose=False)


def _day() -> dt.date:
    return steps.day_of(get_current_context()["data_interval_end"])


@dag(
    dag_id="daily",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    # Far back, so that backfills and one-shot runs of historical data have their tasks.
    start_date=dt.datetime(1990, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    tags=["recs", "daily"],
    default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=5),
                  "owner": "recs"},
    doc_md=__doc__,
)
def daily():
    @task
    def extract() -> dict:
        return steps.extract(_day())

    @task
    def prepare(extracted: dict) -> dict:
        return steps.prepare(_day(), extracted)

    @task
    def item_stats(extracted: dict) -> dict:
        return steps.item_stats(_day(), extracted)

    @task
    def text_embeddings(extracted: dict) -> dict:
        return steps.text_embeddings(_day(), extracted)

    @task
    def train_two_tower(pairs: dict, extracted: dict, text: dict) -> dict:
        return steps.train_two_tower(_day(), pairs, extracted, text)

    @task
    def build_index(pairs: dict) -> dict:
        return steps.build_index(_day(), pairs)

    @task
    def evaluate(pairs: dict, extracted: dict, index: dict, stats: dict, text: dict,
                 two_tower: dict) -> dict:
        return steps.evaluate(_day(), pairs, extracted, index, stats, text, two_tower)

    @task.short_circuit
    def gate(result: dict) -> bool:
        print(result["message"])
        return bool(result["passed"])

    @task
    def precompute(pairs: dict, extracted: dict, index: dict, text: dict, two_tower: dict,
                   result: dict) -> dict:
        return steps.precompute(_day(), pairs, extracted, index, text, two_tower, result)

    @task
    def publish(result: dict, pairs: dict, lists: dict, stats: dict) -> dict:
        return steps.publish(result, pairs, lists, stats)

    @task
    def variants(published: dict) -> dict:
        return steps.variants(published)

    extracted = extract()
    pairs = prepare(extracted)
    train_als = spark_task("train_als", steps.ALS_APP, pairs["als_args"])
    stats = item_stats(extracted)
    covisit = spark_task("covisit", steps.COVISIT_APP, pairs["covisit_args"])
    index = build_index(pairs)
    pairs >> train_als >> index
    text = text_embeddings(extracted)
    two_tower = train_two_tower(pairs, extracted, text)
    result = evaluate(pairs, extracted, index, stats, text, two_tower)
    [train_als, covisit] >> result
    lists = precompute(pairs, extracted, index, text, two_tower, result)
    gate(result) >> lists
    variants(publish(result, pairs, lists, stats))


daily()
